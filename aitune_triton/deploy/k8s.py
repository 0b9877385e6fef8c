"""Kubernetes manifests for N Triton replicas: a Deployment + Service + HorizontalPodAutoscaler
(with the Prometheus Adapter rule the autoscaler needs), or a KServe InferenceService.

Everything is rendered from Jinja templates under ``templates/k8s/`` and every Kubernetes object
is checked against the Kubernetes OpenAPI schemas of ``K8S_VERSION`` with kubernetes-validate
(bundled schemas, works offline) before a file is written. KServe's InferenceService is a custom
resource with no schema there: its predictor is checked as the Pod container it becomes.

The Triton image follows what the repository needs: a built TensorRT plan pins the container
whose TensorRT built it (a plan only loads on that TensorRT); otherwise the container of the
Triton release the repository was validated on (the embedded server's, 2.51 -> 24.10).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aitune_triton import defaults
from aitune_triton.errors import UserError
from aitune_triton.tensorrt.section import PlanStatus
from aitune_triton.templating import template_env
from aitune_triton.version import __version__

K8S_VERSION = "1.37.0"  # the Kubernetes release whose schemas every manifest is checked against
IMAGE = "nvcr.io/nvidia/tritonserver:%s-py3"
METRIC = "triton_queue_time_us"
# Triton server release -> NGC container (YY.MM), from the Triton release notes' compatibility table
CONTAINER_FOR_SERVER = {
    "2.42": "24.01", "2.43": "24.02", "2.44": "24.03", "2.45": "24.04", "2.46": "24.05", "2.47": "24.06",
    "2.48": "24.07", "2.49": "24.08", "2.50": "24.09", "2.51": "24.10", "2.52": "24.11", "2.53": "24.12",
    "2.54": "25.01", "2.55": "25.02", "2.56": "25.03", "2.57": "25.04", "2.58": "25.05", "2.59": "25.06",
    "2.60": "25.08", "2.61": "25.09", "2.62": "25.10", "2.63": "25.11", "2.64": "25.12",
}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
# a container image reference: [registry[:port]/]path[:tag][@digest], no spaces or control characters
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?")


def _release(version: str | None) -> str | None:
    parts = str(version or "").split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]) else None


def choose_image(manifests: list[dict], server_version: str | None) -> tuple[str, str]:
    """(image, why) for the models' manifests (see the module docstring)."""
    from aitune_triton.validate.checks.version_stamp import KNOWN_TRT_FOR_TRITON

    built = {}
    for m in manifests:
        trt = m.get("tensorrt") or {}
        raw_stamp = trt.get("stamp")
        stamp = raw_stamp if isinstance(raw_stamp, dict) else {}
        if trt.get("status") == PlanStatus.BUILT and stamp.get("tensorrt_version"):
            built[m.get("name")] = str(stamp["tensorrt_version"])
    if built:
        versions = {".".join(v.split(".")[:2]) for v in built.values()}
        if len(versions) > 1:
            raise UserError("the plans were built with different TensorRT versions (%s); one Triton image cannot load "
                            "them all: rebuild them in one container"
                            % ", ".join("%s: %s" % kv for kv in built.items()))
        trt = versions.pop()
        for server, shipped in sorted(KNOWN_TRT_FOR_TRITON.items()):
            if ".".join(shipped.split(".")[:2]) == trt and server in CONTAINER_FOR_SERVER:
                tag = CONTAINER_FOR_SERVER[server]
                return IMAGE % tag, "the plans were built with TensorRT %s, which Triton %s (%s) ships" % (
                    trt, server, tag)
        raise UserError("no known Triton container ships TensorRT %s (the plans' builder); pass --image with the "
                        "tritonserver image whose TensorRT built them" % trt)
    release = _release(server_version)
    if release not in CONTAINER_FOR_SERVER:
        raise UserError("no known Triton container for server %s; pass --image" % (server_version or "(unknown)"))
    tag = CONTAINER_FOR_SERVER[release]
    return IMAGE % tag, ("no TensorRT plan; Triton %s (%s) is the release the repository was validated on; "
                         "Python-backend models need torch installed in the image" % (release, tag))


@dataclass(frozen=True)
class DeploySpec:
    """Everything the templates need; validated here, once."""

    name: str
    repository: str  # what the user named (a pointer URL, or a local path)
    server_repository: str  # what tritonserver gets: a versioned s3:// URL, or /models on the PVC
    image: str
    image_reason: str
    replicas: int
    gpus: int = 1
    max_replicas: int | None = None
    pvc: str | None = None
    pvc_subpath: str = ""
    secret: str = defaults.K8S_SECRET
    cpu: str = defaults.K8S_CPU
    memory: str = defaults.K8S_MEMORY
    shm_size: str = defaults.K8S_SHM_SIZE
    queue_target_us: int = defaults.K8S_QUEUE_TARGET_US
    startup_seconds: int = 600
    kserve: bool = False
    extra_args: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise UserError("%r is not a valid Kubernetes name (lowercase letters, digits and '-', at most 53 "
                            "characters); pass --name" % self.name)
        if len(self.image) > 255 or not _IMAGE.fullmatch(self.image):
            raise UserError("--image %r is not a container image reference (registry/path:tag, no spaces or line "
                            "breaks)" % self.image[:300])
        top = defaults.PLAN_MAX_REPLICAS
        for what, value, low, high in (("replicas", self.replicas, 1, top),
                                       ("gpus-per-replica", self.gpus, 0, defaults.K8S_MAX_GPUS_PER_REPLICA),
                                       ("max-replicas", self.max_replicas, 1, 2 * top),
                                       ("queue-target-us", self.queue_target_us, 1, 10 ** 9)):
            if value is None and what == "max-replicas":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UserError("--%s must be an integer in [%d, %d], got %r" % (what, low, high, value))
        max_replicas = self.max_replicas if self.max_replicas is not None else max(2 * self.replicas, 2)
        if max_replicas < self.replicas:
            raise UserError("--max-replicas %d is below --replicas %d" % (max_replicas, self.replicas))
        object.__setattr__(self, "max_replicas", max_replicas)
        for what in ("cpu", "memory", "shm_size"):
            if not _QUANTITY.fullmatch(getattr(self, what)):
                raise UserError("--%s %r is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)"
                                % (what.replace("_", "-"), getattr(self, what)))
        if self.pvc is not None and not _NAME.fullmatch(self.pvc):
            raise UserError("--pvc %r is not a valid claim name" % self.pvc)
        if not _NAME.fullmatch(self.secret):
            raise UserError("--secret %r is not a valid Secret name" % self.secret)

    def context(self) -> dict:
        labels = {"app.kubernetes.io/name": "triton", "app.kubernetes.io/instance": self.name,
                  "app.kubernetes.io/managed-by": "aitune-triton", **self.labels}
        ctx = {**dataclasses.asdict(self), "tool_version": __version__, "labels": labels, "metric": METRIC,
               "selector": {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")},
               "runtime_version": self.image.rsplit(":", 1)[-1], "service_account": "%s-s3" % self.name}
        if self.pvc:
            ctx["storage_uri"] = "/".join(p for p in ("pvc://" + self.pvc, self.pvc_subpath.strip("/")) if p)
            ctx.update(s3_endpoint=None, s3_https=False)
        else:
            from aitune_triton.triton.object_storage import S3Location

            loc = S3Location.parse(self.server_repository)
            ctx["storage_uri"] = "s3://%s/%s" % (loc.bucket, loc.prefix)  # KServe: endpoint goes on the account
            ctx.update(s3_endpoint=loc.endpoint, s3_https=loc.https)
        return ctx


def render(spec: DeploySpec) -> dict[str, str]:
    """File name -> YAML text."""
    env = template_env()
    ctx = spec.context()
    names = (("inferenceservice.yaml",) + (() if spec.pvc else ("serviceaccount.yaml",)) if spec.kserve
             else ("deployment.yaml", "service.yaml", "hpa.yaml", "prometheus-adapter-values.yaml"))
    return {n: env.get_template("k8s/%s.j2" % n).render(**ctx) for n in names}


def _as_pod(isvc: dict) -> dict:
    """The Pod KServe makes of the predictor: what the Kubernetes schema can check."""
    triton = dict(isvc["spec"]["predictor"]["triton"])
    for kserve_only in ("storageUri", "runtimeVersion", "protocolVersion"):
        triton.pop(kserve_only, None)
    spec = {"containers": [{"name": "kserve-container", "image": "placeholder", **triton}]}
    if isvc["spec"]["predictor"].get("serviceAccountName"):
        spec["serviceAccountName"] = isvc["spec"]["predictor"]["serviceAccountName"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": isvc["metadata"], "spec": spec}


def check(files: dict[str, str], k8s_version: str = K8S_VERSION) -> list[str]:
    """Parse every file and check every Kubernetes object against the schemas; returns what was
    checked ("file: Kind/name"), raises UserError naming the first file and field that fails."""
    import kubernetes_validate

    checked = []
    for name, text in files.items():
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise UserError("%s does not parse as YAML: %s" % (name, str(exc).splitlines()[0])) from None
        for doc in docs:
            if "apiVersion" not in doc:  # helm values, not a Kubernetes object
                continue
            target = _as_pod(doc) if doc.get("kind") == "InferenceService" else doc
            try:
                kubernetes_validate.validate(target, k8s_version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path)
                raise UserError("%s: %s fails the Kubernetes %s schema at %s: %s" % (
                    name, doc.get("kind"), k8s_version, where or "(top)", exc.message)) from None
            checked.append("%s: %s/%s" % (name, doc["kind"], doc["metadata"]["name"]))
    return checked


def write(files: dict[str, str], out: Path) -> list[Path]:
    """Write the checked files; each one replaced atomically."""
    from aitune_triton.atomic import replace_file_atomically

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError("--out %s is a file; pass a directory" % out)
    paths = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            replace_file_atomically(out / name, text)
            paths.append(out / name)
    except OSError as exc:
        raise UserError("cannot write the manifests into %s: %s" % (out, exc.strerror or exc)) from None
    return paths


def plan_values(path: Path) -> dict:
    """replicas / gpus / queue target from a ``plan --out`` file."""
    from aitune_triton.deploy.capacity import load_plan

    data = load_plan(path)
    # scale out well before the p99 budget is spent waiting in the queue: a tenth of it
    return {"replicas": data["replicas"], "gpus": data["gpus_per_replica"],
            "queue_target_us": max(1, int(data["p99_ms"] * 100)), "model": data.get("model")}


def check_plan_model(planned: dict, manifests: list[dict], plan_file: Path, repo: Path | str) -> None:
    """A plan sizes the replicas for the curve of one model: applied to a repository without that
    model, its replica count and queue target describe something else, so it is refused."""
    model = planned.get("model")
    names = [str(m.get("name")) for m in manifests]
    if model is not None and model not in names:
        raise UserError("%s is the plan of model %r, which %s does not hold (it has: %s); plan this repository "
                        "(aitune-triton plan %s --model MODEL ... --out PLAN.json)"
                        % (plan_file, model, repo, ", ".join(names), repo))


def manifests_of(local_repo: Path) -> list[dict]:
    found = []
    for path in sorted(Path(local_repo).glob("*/manifest.json")):
        try:
            found.append(json.loads(path.read_text()))
        except ValueError:
            raise UserError("%s is not valid JSON; regenerate the model" % path) from None
    if not found:
        raise UserError("%s holds no model generated by aitune-triton (no */manifest.json)" % local_repo)
    return found
