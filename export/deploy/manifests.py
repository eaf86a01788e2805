"""The fleet's Kubernetes objects, as data built from the project's single sources.

Ports, the admin key's variable, the stop timeout and the stub-crash exit come from the launcher
(``export.launcher``); model instances per GPU from ``Placement`` (``export.triton.placement``); the
health path and the balancer's configuration from ``export.deploy.balancer``. ``python -m
export.deploy`` writes them as the kustomize tree under ``export/deploy/`` (base, overlays, monitoring),
and a test keeps the committed files equal to what this module writes.

The server pod (one Triton per GPU, ``nvidia.com/gpu: 1``):

- init ``engines``: ``python -m export.deploy.engine_cache``: the TensorRT repository for this GPU
  model and TensorRT release, from the cache volume or built into it, linked at ``/serving/repository``.
- ``triton``: the launcher (``python -m export.launcher``) in its stub-crash ``exit`` mode: when a
  Python-backend stub dies (Triton 2.51 never restarts it, and the model keeps answering errors while
  ``/v2/health/ready`` still says 200), the launcher stops the server and exits with status 3, and the
  kubelet restarts the container. The liveness probe (``/v2/health/live``) covers the other failure, a
  tritonserver that no longer answers at all. Readiness is ``/v2/health/ready``: a pod takes traffic
  only once every model is loaded, and the balancer checks the same path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from export.deploy.balancer import READY_PATH, BalancerConfig, Discovery, haproxy_config
from export.launcher.config import ADMIN_KEY_ENV, DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT
from export.triton.placement import Placement

APP = "adaptive-diffusion"
NAMESPACE = "adaptive-diffusion"
SERVER = APP
BALANCER = f"{APP}-balancer"
PODS_SERVICE = f"{APP}-pods"  # headless: one DNS record per ready pod, for the balancer
METRICS_SERVICE = f"{APP}-metrics"
ADMIN_SECRET = f"{APP}-admin"
ENGINE_CACHE_CLAIM = f"{APP}-engine-cache"
ONNX_CLAIM = f"{APP}-onnx"
IMAGE = "adaptive-diffusion-serving:latest"  # built from export/deploy/Dockerfile
BALANCER_IMAGE = "haproxy:2.6"  # the release Debian 12 ships, which the local fleet runs
MONITORING_NAMESPACE = "monitoring"  # where Prometheus runs: the only source allowed on the metrics port

PORTS = {"http": DEFAULT_HTTP_PORT, "grpc": DEFAULT_GRPC_PORT, "metrics": DEFAULT_METRICS_PORT}
LIVE_PATH = "/v2/health/live"
STUB_CRASH_MODE = "exit"  # a test parses the command with the launcher's own parser
EXIT_TIMEOUT_S = 30  # the launcher's --exit-timeout: in-flight images finish on scale-down
ACCEPT_RATE = 0.5  # the default k = 50 keeps half the images: the teacher/student split of the UNets
# End-to-end latency per pod (nv_inference_request_summary_us): needs the server's summary metrics.
SERVER_FLAGS = ("--metrics-config=summary_latencies=true",)
# In-flight work that has not started is the honest load signal here: request rates mislead when one
# image costs a student pass and another a student and a teacher pass, and GPU utilisation stays low
# while the BLS's Python work is the bottleneck. A pod whose requests queue for a BLS instance needs help.
HPA_METRIC = "adaptive_diffusion_pending_requests"
HPA_TARGET_PENDING = "1"
MIN_REPLICAS = 2  # with the PodDisruptionBudget: one pod may go (drain, upgrade) while one serves

# Host memory per process: every BLS instance and every python-trt component instance is a stub
# process that imports torch with a CUDA context; tritonserver itself and the launcher take the rest.
GIB = 2**30
STUB_HOST_BYTES = 1 * GIB
SERVER_HOST_BYTES = 2 * GIB
# The Python backend moves requests and responses through /dev/shm (a response of 8 SD1.5 images is
# 6 MiB; each stub's region starts at 1 MiB and grows): a memory-backed emptyDir per stub's share.
SHM_BYTES_PER_STUB = 256 * 2**20


@dataclass(frozen=True)
class GpuProfile:
    """One overlay: the GPU a node pool has and how a pod on it is set up."""

    name: str
    product: str  # the node label nvidia.com/gpu.product (NVIDIA GPU feature discovery)
    unet_instances: int  # UNet instances per GPU, split student/teacher by ACCEPT_RATE (export/TENSORRT.md)
    max_replicas: int

    def placement(self) -> Placement:
        # The tiny and SD1.5 students default to 4 steps and the teacher to 10 (GenerationSettings).
        from bll_python.settings import GenerationSettings

        d = GenerationSettings()
        return Placement.from_accept_rate(ACCEPT_RATE, student_steps=d.student_steps, teacher_steps=d.teacher_steps, unet_instances=self.unet_instances)

    def stub_processes(self) -> int:
        return sum(self.placement().counts.values())

    def memory(self) -> str:
        return f"{(self.stub_processes() * STUB_HOST_BYTES + SERVER_HOST_BYTES) // GIB}Gi"

    def cpu(self) -> str:
        # Each BLS instance spends part of every request in Python between component calls.
        return str(max(2, self.placement().bls // 2 + 1))

    def shm(self) -> str:
        return f"{self.stub_processes() * SHM_BYTES_PER_STUB // 2**20}Mi"


# Starting points, not measured here (no GPU in CI): export/TENSORRT.md says start at 2 UNet instances
# and raise while perf_analyzer's throughput still grows; an H100 overlaps more than an A100.
PROFILES = {
    "a100": GpuProfile("a100", "NVIDIA-A100-SXM4-80GB", unet_instances=2, max_replicas=8),
    "h100": GpuProfile("h100", "NVIDIA-H100-80GB-HBM3", unet_instances=4, max_replicas=8),
}
BASE_PROFILE = PROFILES["a100"]


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": component}


def _port_list(names=("http", "grpc", "metrics")) -> list[dict[str, Any]]:
    return [{"name": n, "containerPort": PORTS[n], "protocol": "TCP"} for n in names]


def engines_args(profile: GpuProfile) -> list[str]:
    return [
        "python", "-m", "export.deploy.engine_cache", "--onnx", "/models/onnx", "--cache", "/engine-cache",
        "--link", "/serving/repository", "--backend", "python-trt",
        "--unet-instances", str(profile.unet_instances), "--accept-rate", str(ACCEPT_RATE),
    ]  # fmt: skip


def server_command() -> list[str]:
    return [
        "python", "-m", "export.launcher", "--repository", "/serving/repository", "--host", "0.0.0.0",
        "--http-port", str(PORTS["http"]), "--grpc-port", str(PORTS["grpc"]), "--metrics-port", str(PORTS["metrics"]),
        "--on-stub-crash", STUB_CRASH_MODE, "--exit-timeout", str(EXIT_TIMEOUT_S), "--ready-timeout", "1800",
        "--", *SERVER_FLAGS,
    ]  # fmt: skip


def server_deployment(profile: GpuProfile = BASE_PROFILE) -> dict[str, Any]:
    resources = {"cpu": profile.cpu(), "memory": profile.memory(), "nvidia.com/gpu": 1}
    probe = lambda path, period, failures: {  # noqa: E731
        "httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 2, "failureThreshold": failures,
    }  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": SERVER, "labels": _labels("server")},
        "spec": {
            "replicas": MIN_REPLICAS,
            "selector": {"matchLabels": _labels("server")},
            # A new pod builds or finds its engines before it is ready; never drop below the current fleet.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": _labels("server")},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": profile.product},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "terminationGracePeriodSeconds": EXIT_TIMEOUT_S + 15,
                    # The image's user (export/deploy/Dockerfile); fsGroup lets it write the engine cache.
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
                    "initContainers": [
                        {
                            "name": "engines",
                            "image": IMAGE,
                            "command": engines_args(profile),
                            "resources": {"requests": resources, "limits": resources},
                            "volumeMounts": [
                                {"name": "onnx", "mountPath": "/models/onnx", "readOnly": True},
                                {"name": "engine-cache", "mountPath": "/engine-cache"},
                                {"name": "serving", "mountPath": "/serving"},
                            ],
                        }
                    ],
                    "containers": [
                        {
                            "name": "triton",
                            "image": IMAGE,
                            "command": server_command(),
                            "env": [{"name": ADMIN_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ADMIN_SECRET, "key": ADMIN_KEY_ENV}}}],
                            "ports": _port_list(),
                            "resources": {"requests": resources, "limits": resources},
                            # Loading the engines of every instance takes minutes on a GPU: startup
                            # allows 30 min, then liveness and readiness take over.
                            "startupProbe": probe(READY_PATH, 10, 180),
                            "readinessProbe": probe(READY_PATH, 5, 2),
                            "livenessProbe": probe(LIVE_PATH, 10, 3),
                            "securityContext": {"allowPrivilegeEscalation": False},
                            "volumeMounts": [
                                {"name": "engine-cache", "mountPath": "/engine-cache", "readOnly": True},
                                {"name": "serving", "mountPath": "/serving", "readOnly": True},
                                {"name": "dshm", "mountPath": "/dev/shm"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "onnx", "persistentVolumeClaim": {"claimName": ONNX_CLAIM, "readOnly": True}},
                        {"name": "engine-cache", "persistentVolumeClaim": {"claimName": ENGINE_CACHE_CLAIM}},
                        {"name": "serving", "emptyDir": {}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": profile.shm()}},
                    ],
                },
            },
        },
    }


def _service(name: str, ports: list[str], *, headless: bool = False, component: str = "server") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": _labels("server"),
        "ports": [
            {"name": p, "port": PORTS[p], "targetPort": p, **({"appProtocol": "kubernetes.io/h2c"} if p == "grpc" else {})} for p in ports
        ],
    }
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": _labels(component)}, "spec": spec}


def services() -> list[dict[str, Any]]:
    return [
        _service(SERVER, ["http", "grpc"]),  # in-cluster clients that do not need the balancer
        _service(PODS_SERVICE, ["http", "grpc"], headless=True),
        _service(METRICS_SERVICE, ["metrics"], component="metrics"),
    ]


def engine_cache_claims() -> list[dict[str, Any]]:
    def claim(name: str, size: str, mode: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "labels": _labels("server")},
            "spec": {"accessModes": [mode], "resources": {"requests": {"storage": size}}},
        }

    # Every pod reads the ONNX repository and shares the engine cache: both ReadWriteMany.
    return [claim(ONNX_CLAIM, "20Gi", "ReadWriteMany"), claim(ENGINE_CACHE_CLAIM, "50Gi", "ReadWriteMany")]


def network_policy() -> dict[str, Any]:
    """Inference ports: pods in the cluster only (the balancer among them). Metrics: Prometheus's
    namespace only. The admin APIs share the HTTP port: in-cluster only, behind the key, and refused
    by the balancer, which is the one way in from outside."""
    ports = lambda *names: [{"protocol": "TCP", "port": n} for n in names]  # noqa: E731
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": SERVER, "labels": _labels("server")},
        "spec": {
            "podSelector": {"matchLabels": _labels("server")},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"namespaceSelector": {}}], "ports": ports("http", "grpc")},
                {
                    "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}}}],
                    "ports": ports("metrics"),
                },
            ],
        },
    }


def pod_disruption_budget() -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": SERVER, "labels": _labels("server")},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels("server")}},
    }


def autoscaler(profile: GpuProfile = BASE_PROFILE) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": SERVER, "labels": _labels("server")},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": SERVER},
            "minReplicas": MIN_REPLICAS,
            "maxReplicas": profile.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {"metric": {"name": HPA_METRIC}, "target": {"type": "AverageValue", "averageValue": HPA_TARGET_PENDING}},
                }
            ],
            "behavior": {
                # A new GPU pod takes minutes to load (longer on a cold engine cache): add one a minute
                # while the queue lasts, and remove slowly so a short lull does not drop warm pods.
                "scaleUp": {"stabilizationWindowSeconds": 60, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
                "scaleDown": {"stabilizationWindowSeconds": 600, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]},
            },
        },
    }


def balancer_config(slots: int = 16) -> BalancerConfig:
    fqdn = f"{PODS_SERVICE}.{NAMESPACE}.svc.cluster.local"
    return BalancerConfig("0.0.0.0", PORTS["http"], PORTS["grpc"], discovery=Discovery(fqdn, PORTS["http"], PORTS["grpc"], slots))


def balancer_objects() -> list[dict[str, Any]]:
    labels = _labels("balancer")
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": BALANCER, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "haproxy",
                            "image": BALANCER_IMAGE,
                            "args": ["-f", "/usr/local/etc/haproxy/haproxy.cfg"],
                            "ports": _port_list(("http", "grpc")),
                            "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 5},
                            "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": False},
                            "volumeMounts": [{"name": "config", "mountPath": "/usr/local/etc/haproxy", "readOnly": True}],
                        }
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": f"{BALANCER}-config"}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": BALANCER, "labels": labels},
        "spec": {
            "type": "LoadBalancer",
            "selector": labels,
            "ports": [
                {"name": "http", "port": PORTS["http"], "targetPort": "http"},
                {"name": "grpc", "port": PORTS["grpc"], "targetPort": "grpc", "appProtocol": "kubernetes.io/h2c"},
            ],
        },
    }
    return [deployment, service]


def service_monitor() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": SERVER, "labels": _labels("metrics")},
        "spec": {
            "selector": {"matchLabels": _labels("metrics")},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }


def balancer_cfg_text() -> str:
    return haproxy_config(balancer_config())
