"""The kustomize tree under ``export/deploy/``, file by file, from the data in ``manifests`` and ``monitoring``.

    python -m export.deploy            # write the tree
    python -m export.deploy --check    # exit 1 and name the files that differ from what would be written

Layout: ``base/`` (the server Deployment with its engine init step, Services, storage, NetworkPolicy,
PodDisruptionBudget, HPA, the balancer and its generated haproxy.cfg), ``monitoring/`` (ServiceMonitor,
Grafana dashboard ConfigMap, prometheus-adapter values), ``overlays/<gpu>/`` (base + monitoring,
patched for one GPU type's node pool: node selector, instances, resources, replicas).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from export.deploy import manifests as m
from export.deploy import monitoring

DEPLOY_DIR = Path(__file__).resolve().parent
HEADER = "# Written by `python -m export.deploy` from export/deploy/*.py; edit those and regenerate.\n"


def _yaml(*docs: dict[str, Any]) -> str:
    return HEADER + "---\n".join(yaml.safe_dump(d, sort_keys=False, width=200) for d in docs)


def _overlay_patches(profile: m.GpuProfile) -> tuple[dict[str, Any], dict[str, Any]]:
    resources = {"cpu": profile.cpu(), "memory": profile.memory(), "nvidia.com/gpu": 1}
    server = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": m.SERVER},
        "spec": {
            "template": {
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": profile.product},
                    "initContainers": [{"name": "engines", "command": m.engines_args(profile), "resources": {"requests": resources, "limits": resources}}],
                    "containers": [{"name": "triton", "resources": {"requests": resources, "limits": resources}}],
                    "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": profile.shm()}}],
                }
            }
        },
    }
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": m.SERVER}, "spec": {"maxReplicas": profile.max_replicas}}
    return server, hpa


def files() -> dict[str, str]:
    """Relative path under export/deploy/ -> content."""
    out = {
        "base/kustomization.yaml": _yaml({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": m.NAMESPACE,
            "resources": ["server.yaml", "services.yaml", "storage.yaml", "network-policy.yaml", "disruption-budget.yaml", "autoscaler.yaml", "balancer.yaml"],
            "configMapGenerator": [{"name": f"{m.BALANCER}-config", "files": ["haproxy.cfg"]}],
        }),  # fmt: skip
        "base/server.yaml": _yaml(m.server_deployment()),
        "base/services.yaml": _yaml(*m.services()),
        "base/storage.yaml": _yaml(*m.engine_cache_claims()),
        "base/network-policy.yaml": _yaml(m.network_policy()),
        "base/disruption-budget.yaml": _yaml(m.pod_disruption_budget()),
        "base/autoscaler.yaml": _yaml(m.autoscaler()),
        "base/balancer.yaml": _yaml(*m.balancer_objects()),
        "base/haproxy.cfg": "# Written by `python -m export.deploy` (export/deploy/balancer.py).\n" + m.balancer_cfg_text(),
        "monitoring/kustomization.yaml": _yaml({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": ["service-monitor.yaml"],
            # The Grafana sidecar of kube-prometheus-stack imports ConfigMaps with this label.
            "configMapGenerator": [{
                "name": "adaptive-diffusion-dashboard", "files": ["grafana-dashboard.json"],
                "options": {"labels": {"grafana_dashboard": "1"}, "disableNameSuffixHash": True},
            }],
        }),  # fmt: skip
        "monitoring/service-monitor.yaml": _yaml(m.service_monitor()),
        "monitoring/grafana-dashboard.json": json.dumps(monitoring.dashboard(), indent=1) + "\n",
        "monitoring/prometheus-adapter-values.yaml": _yaml(monitoring.adapter_values()),
    }
    for name, profile in m.PROFILES.items():
        server, hpa = _overlay_patches(profile)
        out[f"overlays/{name}/kustomization.yaml"] = _yaml({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": ["../../base", "../../monitoring"],
            "namespace": m.NAMESPACE,
            "labels": [{"pairs": {"adaptive-diffusion/gpu": name}, "includeSelectors": False}],
            "patches": [{"path": "server-patch.yaml"}, {"path": "autoscaler-patch.yaml"}],
        })  # fmt: skip
        out[f"overlays/{name}/server-patch.yaml"] = _yaml(server)
        out[f"overlays/{name}/autoscaler-patch.yaml"] = _yaml(hpa)
    return out


def write(root: Path = DEPLOY_DIR) -> list[Path]:
    written = []
    for rel, text in files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def stale(root: Path = DEPLOY_DIR) -> list[str]:
    """Files whose committed content differs from what ``write`` would write."""
    return [rel for rel, text in files().items() if not (root / rel).is_file() or (root / rel).read_text() != text]
