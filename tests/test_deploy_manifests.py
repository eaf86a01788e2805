"""The Kubernetes fleet under export/deploy/: generated from the project's single sources, rendered by
kustomize, valid against the Kubernetes schemas of a stated release, and consistent with itself
(every selector, port name, probe path and metric name points at something that exists).

Rendering uses ``kubectl kustomize`` (kubectl >= 1.27, whose kustomize v5 reads the overlays'
``labels`` and ``patches`` fields); the schemas are kubernetes-validate's for ``K8S_VERSION``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bll_python.settings import GenerationSettings
from export.deploy import manifests as m
from export.deploy.balancer import READY_PATH
from export.deploy.monitoring import ADAPTER_RULES
from export.deploy.tree import DEPLOY_DIR, files, stale
from export.launcher.cli import _parse_args as parse_launcher_args
from export.launcher.config import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT
from export.triton.placement import Placement

K8S_VERSION = "1.32"  # the kubectl this project renders with (1.32.4); any cluster >= 1.25 has these APIs
TARGETS = ["base", *(f"overlays/{name}" for name in m.PROFILES)]
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}  # not in the Kubernetes schemas: checked below


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl not found: these tests render export/deploy/ with `kubectl kustomize` (see the Makefile's system-deps)"
    return kubectl


def render(target: str) -> list[dict]:
    done = subprocess.run([_kubectl(), "kustomize", str(DEPLOY_DIR / target)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {target}: {done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def server_pod(objects: list[dict]) -> dict:
    return one(objects, "Deployment", m.SERVER)["spec"]["template"]


def test_the_committed_tree_is_what_the_generator_writes():
    assert stale() == [], "export/deploy/ differs from its generator: run `python -m export.deploy` and commit"


def test_every_target_renders_and_validates_against_the_kubernetes_schemas(rendered):
    import kubernetes_validate

    target, objects = rendered
    kinds = {(o["apiVersion"], o["kind"]) for o in objects}
    assert {("apps/v1", "Deployment"), ("v1", "Service"), ("networking.k8s.io/v1", "NetworkPolicy"), ("policy/v1", "PodDisruptionBudget"),
            ("autoscaling/v2", "HorizontalPodAutoscaler"), ("v1", "ConfigMap"), ("v1", "PersistentVolumeClaim")} <= kinds  # fmt: skip
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert all(o["metadata"].get("namespace") == m.NAMESPACE for o in objects)


def test_a_schema_violation_is_caught():
    import kubernetes_validate

    bad = server_pod(render("base"))
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"selector": {}, "template": {**bad, "spec": {**bad["spec"], "containers": "triton"}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_one_triton_per_gpu_started_by_the_launcher_in_its_stub_crash_exit_mode(rendered):
    _, objects = rendered
    (triton,) = server_pod(objects)["spec"]["containers"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1 and triton["resources"]["requests"]["nvidia.com/gpu"] == 1
    command = triton["command"]
    assert command[:3] == ["python", "-m", "export.launcher"]
    args, extra = parse_launcher_args(command[3:])
    # The pod restarts when a Python stub dies (the dest is on_crash once the launcher supervises any crash).
    assert vars(args).get("on_crash", vars(args).get("on_stub_crash")) == "exit"
    assert (args.http_port, args.grpc_port, args.metrics_port) == (DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT)
    assert args.host == "0.0.0.0" and str(args.repository) == "/serving/repository"
    assert "--metrics-config=summary_latencies=true" in extra
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == m.PORTS
    assert triton["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "http"}
    assert triton["startupProbe"]["httpGet"]["path"] == READY_PATH
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    (key_env,) = [e for e in triton["env"] if e["name"] == "ADS_ADMIN_KEY"]
    assert key_env["valueFrom"]["secretKeyRef"]["name"] == m.ADMIN_SECRET


def test_the_engine_init_step_links_the_repository_the_server_serves(rendered):
    _, objects = rendered
    spec = server_pod(objects)["spec"]
    (init,) = spec["initContainers"]
    command = init["command"]
    assert command[:3] == ["python", "-m", "export.deploy.engine_cache"]
    link = command[command.index("--link") + 1]
    (triton,) = spec["containers"]
    assert link == triton["command"][triton["command"].index("--repository") + 1]
    mounts = {v["name"]: v["mountPath"] for v in init["volumeMounts"]}
    assert link.startswith(mounts["serving"] + "/") and command[command.index("--cache") + 1] == mounts["engine-cache"]
    volumes = {v["name"] for v in spec["volumes"]}
    assert set(mounts) <= volumes and {v["name"] for v in triton["volumeMounts"]} <= volumes


@pytest.mark.parametrize("name", sorted(m.PROFILES))
def test_each_overlay_places_its_gpu_and_sizes_the_pod_from_the_placement(name):
    profile = m.PROFILES[name]
    objects = render(f"overlays/{name}")
    spec = server_pod(objects)["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": profile.product}
    (init,) = spec["initContainers"]
    assert init["command"][init["command"].index("--unet-instances") + 1] == str(profile.unet_instances)
    d = GenerationSettings()
    placement = Placement.from_accept_rate(m.ACCEPT_RATE, student_steps=d.student_steps, teacher_steps=d.teacher_steps, unet_instances=profile.unet_instances)
    stubs = sum(placement.counts.values())  # every BLS and python-trt component instance is a process
    (triton,) = spec["containers"]
    assert triton["resources"]["requests"]["memory"] == f"{stubs + 2}Gi"
    (dshm,) = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert dshm["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{stubs * 256}Mi"}
    assert one(objects, "HorizontalPodAutoscaler", m.SERVER)["spec"]["maxReplicas"] == profile.max_replicas
    assert all(o["metadata"]["labels"]["adaptive-diffusion/gpu"] == name for o in objects)


def test_services_select_the_server_pods_by_their_named_ports(rendered):
    _, objects = rendered
    pod = server_pod(objects)
    port_names = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    for svc in [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] != m.BALANCER]:
        assert svc["spec"]["selector"] == pod["metadata"]["labels"]
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    assert one(objects, "Service", m.PODS_SERVICE)["spec"]["clusterIP"] == "None"


def test_metrics_and_admin_stay_inside_the_cluster(rendered):
    _, objects = rendered
    policy = one(objects, "NetworkPolicy", m.SERVER)["spec"]
    assert policy["podSelector"]["matchLabels"] == server_pod(objects)["metadata"]["labels"]
    assert policy["policyTypes"] == ["Ingress"]
    by_port = {p["port"]: rule["from"] for rule in policy["ingress"] for p in rule["ports"]}
    assert set(by_port) == {"http", "grpc", "metrics"}
    # Inference (and the key-protected admin APIs on the HTTP port): pods of any namespace, nothing outside.
    assert by_port["http"] == by_port["grpc"] == [{"namespaceSelector": {}}]
    assert by_port["metrics"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": m.MONITORING_NAMESPACE}}}]
    # The one way in from outside is the balancer, which refuses the admin APIs.
    cfg = one(objects, "ConfigMap", next(o["metadata"]["name"] for o in objects if o["metadata"]["name"].startswith(f"{m.BALANCER}-config")))
    assert "http-request deny deny_status 403 if admin_api" in cfg["data"]["haproxy.cfg"]


def test_the_disruption_budget_and_autoscaler_cover_the_server(rendered):
    _, objects = rendered
    labels = server_pod(objects)["metadata"]["labels"]
    pdb = one(objects, "PodDisruptionBudget", m.SERVER)["spec"]
    assert pdb["selector"]["matchLabels"] == labels and pdb["maxUnavailable"] == 1
    hpa = one(objects, "HorizontalPodAutoscaler", m.SERVER)["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": m.SERVER}
    assert hpa["minReplicas"] >= 2  # with maxUnavailable 1, a drain never empties the fleet
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] in {r["name"]["as"] for r in ADAPTER_RULES}


def test_the_balancer_finds_the_ready_pods_through_the_headless_service(rendered):
    _, objects = rendered
    cfgmaps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(f"{m.BALANCER}-config")]
    (cfg,) = cfgmaps
    text = cfg["data"]["haproxy.cfg"]
    assert f"{m.PODS_SERVICE}.{m.NAMESPACE}.svc.cluster.local:{m.PORTS['http']}" in text
    deployment = one(objects, "Deployment", m.BALANCER)["spec"]["template"]["spec"]
    assert deployment["volumes"][0]["configMap"]["name"] == cfg["metadata"]["name"]  # kustomize rewrote the hashed name


def test_the_service_monitor_scrapes_the_metrics_port_of_the_metrics_service():
    objects = render("overlays/a100")
    monitor = one(objects, "ServiceMonitor", m.SERVER)["spec"]
    svc = one(objects, "Service", m.METRICS_SERVICE)
    assert monitor["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == [p["name"] for p in svc["spec"]["ports"]] == ["metrics"]


def test_the_generator_writes_every_file_of_the_tree():
    written = set(files())
    on_disk = {str(p.relative_to(DEPLOY_DIR)) for sub in ("base", "monitoring", "overlays") for p in (DEPLOY_DIR / sub).rglob("*") if p.is_file()}
    assert on_disk == written  # nothing stale left behind by a renamed file
