"""Beyond one server: the Kubernetes fleet (kustomize base and GPU overlays, generated from the
project's single sources), its load balancer's configuration, the engine cache init step and the
monitoring (dashboard, Prometheus adapter rules). Operator's guide: ``export/deploy/README.md``."""
