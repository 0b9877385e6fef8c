"""A capacity plan from measurements: how many Triton replicas (and GPUs) serve a target request
rate within a p99 budget, read from the throughput/latency curve that ``validate`` or ``tune``
measured with perf_analyzer.

The model: one replica serves at most the best throughput measured at a p99 within the budget
(its *capacity*); replicas are independent servers behind a Service, so capacity scales linearly
with the replica count (the assumption, stated in every plan). A headroom fraction keeps each
replica below its measured capacity (for load imbalance, bursts and a replica being replaced).
Where the measurements themselves say something else (the best point is the last one measured,
so capacity may be higher; instance counts that did not scale; a CPU measurement for a GPU plan)
the plan carries a warning instead of hiding it.

Report formats read: ``report.json`` of ``validate`` (``models[].perf[]`` rows with
``concurrency``, ``throughput``, ``p99_ms``) and ``tune_report.json`` of ``tune``
(``measurements[]`` with the variant, ``status`` and the same figures; the chosen variant's
points are the curve, since that is the config written back: the same instances, queue delay and
preferred batch sizes, over plain messages where those were measured, one point per concurrency).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from aitune_triton import defaults
from aitune_triton.errors import UserError
from aitune_triton.tune.points import Status  # standard library only: no tuner, no tritonclient

VALIDATE_REPORT = "report.json"
TUNE_REPORT = "tune_report.json"
ASSUMPTION = ("linear scaling per replica: each replica is an independent Triton server with its own "
              "GPU(s)/cores behind one Service, so N replicas serve N x the per-replica capacity; no "
              "multi-replica point was measured to say otherwise")


@dataclass(frozen=True)
class CurvePoint:
    """One perf_analyzer point of the deployed config: batch-1 requests at ``concurrency``."""

    concurrency: int
    throughput: float
    p99_ms: float

    def to_dict(self) -> dict:
        return {"concurrency": self.concurrency, "throughput": self.throughput, "p99_ms": self.p99_ms}


@dataclass(frozen=True)
class Curve:
    """The measured curve of one model and where it came from."""

    model: str
    source: Path
    kind: str  # "validate" or "tune"
    points: tuple[CurvePoint, ...]
    instances: int
    device: str  # "gpu" or "cpu": where the measured instances ran
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlanRequest:
    """What the plan must meet; validated here, once."""

    target_rps: float
    p99_ms: float
    headroom: float = defaults.PLAN_HEADROOM
    gpus_per_replica: int | None = None
    min_replicas: int = defaults.PLAN_MIN_REPLICAS

    def __post_init__(self) -> None:
        if not (self.target_rps > 0 and math.isfinite(self.target_rps)):
            raise UserError("--target-rps must be a finite number > 0, got %r" % self.target_rps)
        if not (self.p99_ms > 0 and math.isfinite(self.p99_ms)):
            raise UserError("--p99-ms must be a finite number > 0, got %r" % self.p99_ms)
        if not 0 <= self.headroom < 1:
            raise UserError("--headroom must be in [0, 1) (a fraction of capacity kept free), got %r" % self.headroom)
        if self.gpus_per_replica is not None and not 0 <= self.gpus_per_replica <= defaults.K8S_MAX_GPUS_PER_REPLICA:
            raise UserError("--gpus-per-replica must be in [0, %d], got %r"
                            % (defaults.K8S_MAX_GPUS_PER_REPLICA, self.gpus_per_replica))
        if not 1 <= self.min_replicas <= defaults.PLAN_MAX_REPLICAS:
            raise UserError("--min-replicas must be in [1, %d], got %r"
                            % (defaults.PLAN_MAX_REPLICAS, self.min_replicas))


@dataclass(frozen=True)
class CapacityPlan:
    model: str
    request: PlanRequest
    source: str
    operating_point: CurvePoint
    replica_capacity: float
    replicas: int
    gpus_per_replica: int
    instances: int
    device: str
    curve: tuple[CurvePoint, ...]
    assumption: str = ASSUMPTION
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def gpus(self) -> int:
        return self.replicas * self.gpus_per_replica

    @property
    def usable_per_replica(self) -> float:
        return self.replica_capacity * (1 - self.request.headroom)

    @property
    def load_per_replica(self) -> float:
        return self.request.target_rps / self.replicas

    def to_dict(self) -> dict:
        per_gpu = self.replica_capacity / self.gpus_per_replica if self.gpus_per_replica else None
        return {"model": self.model, "source": self.source, "target_rps": self.request.target_rps,
                "p99_ms": self.request.p99_ms, "headroom": self.request.headroom, "replicas": self.replicas,
                "gpus_per_replica": self.gpus_per_replica, "gpus": self.gpus, "instances_per_replica": self.instances,
                "measured_device": self.device, "replica_capacity_rps": round(self.replica_capacity, 2),
                "capacity_per_instance_rps": round(self.replica_capacity / max(self.instances, 1), 2),
                "capacity_per_gpu_rps": round(per_gpu, 2) if per_gpu is not None else None,
                "usable_per_replica_rps": round(self.usable_per_replica, 2),
                "load_per_replica_rps": round(self.load_per_replica, 2),
                "operating_point": self.operating_point.to_dict(), "curve": [p.to_dict() for p in self.curve],
                "assumption": self.assumption, "warnings": list(self.warnings)}

    def to_text(self) -> str:
        op = self.operating_point
        lines = [
            "capacity plan for %s: %d replica(s) x %d GPU(s) = %d GPU(s)" % (self.model, self.replicas,
                                                                        self.gpus_per_replica, self.gpus),
            "  target: %.1f requests/s at p99 <= %.1f ms, headroom %.0f %%" % (
                self.request.target_rps, self.request.p99_ms, 100 * self.request.headroom),
            "  measured (%s): one replica (%d instance(s) on %s) serves %.1f infer/s at concurrency %d with "
            "p99 %.2f ms" % (self.source, self.instances, self.device, op.throughput, op.concurrency, op.p99_ms),
            "  per instance %.1f infer/s%s" % (
                self.replica_capacity / max(self.instances, 1),
                ", per GPU %.1f infer/s" % (self.replica_capacity / self.gpus_per_replica)
                if self.gpus_per_replica else ""),
            "  usable per replica %.1f infer/s (capacity x %.2f); load per replica %.1f requests/s" % (
                self.usable_per_replica, 1 - self.request.headroom, self.load_per_replica),
            "  replicas = max(%d, ceil(%.1f / %.1f)) = %d" % (self.request.min_replicas, self.request.target_rps,
                                                               self.usable_per_replica, self.replicas),
            "  assumption: %s" % self.assumption,
        ]
        lines += ["  warning: %s" % w for w in self.warnings]
        return "\n".join(lines)


# ---------------------------------------------------------------- reading reports


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError("report %s not found; run `aitune-triton validate` (with perf) or `tune` first"
                        % path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError("%s is not a JSON report (%s)" % (path, exc)) from None


def _config_facts(model_dir: Path) -> tuple[int, str]:
    """(instances, "gpu"|"cpu") from the model's config.pbtxt and manifest (validate reports hold neither)."""
    from aitune_triton.triton.render import parse_config

    from aitune_triton.integrity import tree_problems

    instances, device = 1, "cpu"
    config = model_dir / "config.pbtxt"
    refused = tree_problems(model_dir) if model_dir.is_dir() else []
    if refused:  # nothing is read through a symlink (a parse error would quote the file it points to)
        raise UserError("refusing to read %s: %s" % (model_dir, "; ".join(refused[:3])))
    if config.exists():
        cfg = parse_config(config.read_text())
        if cfg.instance_group:
            group = cfg.instance_group[0]
            instances = int(group.count or 1)
            kinds = type(group)
            gpu = group.kind == kinds.KIND_GPU or (group.kind == kinds.KIND_AUTO and cfg.backend == "tensorrt")
            device = "gpu" if gpu else "cpu"
    manifest = model_dir / "manifest.json"
    if manifest.exists():
        try:
            if json.loads(manifest.read_text()).get("versions", {}).get("device") == "cuda":
                device = "gpu"
        except ValueError:
            pass
    return instances, device


def _point(row: object, report: Path) -> CurvePoint:
    """One measured point; wrong types, NaN, infinities or negative figures are one UserError line."""
    if not isinstance(row, dict):
        raise UserError("%s: a measurement is %s, not an object; is it a report written by aitune-triton?"
                        % (report, type(row).__name__))
    try:
        concurrency, throughput, p99 = row["concurrency"], row["throughput"], row["p99_ms"]
    except KeyError as exc:
        raise UserError("%s: a measurement has no %s; is it a report written by aitune-triton?" % (report, exc)) \
            from None
    numbers = (concurrency, throughput, p99)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers) \
            or not all(math.isfinite(v) for v in numbers) or concurrency != int(concurrency) or concurrency < 1 \
            or throughput < 0 or p99 <= 0:
        raise UserError("%s: measurement %s is not valid (concurrency an integer >= 1, throughput >= 0 and p99_ms "
                        "> 0, finite numbers)" % (report, json.dumps(row)[:200]))
    return CurvePoint(int(concurrency), float(throughput), float(p99))


def _rows(value: object, report: Path, what: str) -> list:
    if not isinstance(value, list):
        raise UserError("%s: %s is %s, not a list; is it a report written by aitune-triton?"
                        % (report, what, type(value).__name__))
    return value


def read_curve(report: Path, model: str, model_dir: Path | None = None) -> Curve:
    """The measured curve of ``model`` from a validate or tune report."""
    data = _read_json(report)
    if not isinstance(data, dict):
        raise UserError("%s is neither a validate report.json nor a tune_report.json (not a JSON object)" % report)
    instances, device = _config_facts(model_dir) if model_dir else (1, "cpu")
    notes: list[str] = []
    if "measurements" in data and "objective" in data:
        if data.get("model") != model:
            raise UserError("%s is the tune report of %r, not %r" % (report, data.get("model"), model))
        chosen = data.get("chosen") or data.get("previous")
        if not chosen:
            raise UserError("%s has neither a chosen nor a previous config" % report)
        if not isinstance(chosen, dict):
            raise UserError("%s: the chosen config is %s, not an object" % (report, type(chosen).__name__))
        measurements = _rows(data["measurements"], report, "measurements")
        if not all(isinstance(m, dict) for m in measurements):
            raise UserError("%s: every measurement must be an object" % report)
        preferred = _preferred(chosen, report)
        key = (chosen.get("instances"), chosen.get("max_queue_delay_us"), preferred)
        ok = [m for m in measurements if m.get("status") == Status.OK]
        mine = [m for m in ok if (m.get("instances"), m.get("max_queue_delay_us"), _preferred(m, report)) == key]
        transport = _transport(mine, chosen)
        if transport != "none":
            notes.append("the chosen config was measured only over %s shared memory, which clients reaching Triton "
                         "through a Service cannot use: capacity is overstated; tune with --transports none to plan "
                         "from plain requests" % transport)
        points = _one_per_concurrency(_point(m, report) for m in mine if m.get("transport", "none") == transport)
        count = chosen.get("instances") or instances
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UserError("%s: the chosen instance count %r is not an integer >= 1" % (report, count))
        instances = count
        notes += _instance_scaling([m for m in ok if isinstance(m.get("instances"), int)
                                    and isinstance(m.get("throughput"), (int, float))
                                    and _preferred(m, report) == preferred
                                    and m.get("transport", "none") == transport], chosen)
        kind = "tune"
    elif "models" in data and "server" in data:
        models = [m for m in _rows(data["models"], report, "models") if isinstance(m, dict)]
        entry = next((m for m in models if m.get("name") == model), None)
        if entry is None:
            raise UserError("%s has no model %r (it has: %s)" % (report, model,
                                                               ", ".join(str(m.get("name", "?")) for m in models)))
        points = tuple(_point(r, report) for r in _rows(entry.get("perf", []), report, "perf"))
        kind = "validate"
    else:
        raise UserError("%s is neither a validate report.json nor a tune_report.json" % report)
    points = tuple(sorted((p for p in points if p.throughput > 0), key=lambda p: p.concurrency))
    if not points:
        raise UserError("%s holds no throughput measurements for %s; run validate with perf (not --no-perf) or tune"
                        % (report, model))
    return Curve(model, Path(report), kind, points, instances, device, tuple(notes))


def _preferred(row: dict, report: Path) -> tuple[int, ...]:
    """A tune row's preferred batch sizes (none recorded: the config's own, as ``()``)."""
    value = row.get("preferred") or []
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise UserError("%s: preferred batch sizes %r are not a list of integers; is it a report written by "
                        "aitune-triton?" % (report, value))
    return tuple(value)


def _transport(rows: list[dict], chosen: dict) -> str:
    """The client transport whose points make the curve: plain messages ("none") wherever the chosen
    config was measured with them, since clients behind a Kubernetes Service cannot share memory with
    the server and a shared-memory point overstates what they get; else the chosen point's own."""
    measured = {m.get("transport", "none") for m in rows}
    if "none" in measured or not measured:
        return "none"
    wanted = str(chosen.get("transport"))
    return wanted if wanted in measured else sorted(measured)[0]


def _one_per_concurrency(points: Iterable[CurvePoint]) -> tuple[CurvePoint, ...]:
    """One point per concurrency: where a level was measured twice, the lower throughput, so a lucky
    run never sizes the deployment."""
    kept: dict[int, CurvePoint] = {}
    for p in points:
        if p.concurrency not in kept or p.throughput < kept[p.concurrency].throughput:
            kept[p.concurrency] = p
    return tuple(kept.values())


def _instance_scaling(measurements: list[dict], chosen: dict) -> list[str]:
    """What the tune grid says about scaling with instances (same delay, best point per count)."""
    best: dict[int, float] = {}
    for m in measurements:
        if m.get("status") == Status.OK and m.get("max_queue_delay_us") == chosen.get("max_queue_delay_us"):
            best[int(m["instances"])] = max(best.get(int(m["instances"]), 0.0), float(m["throughput"]))
    if len(best) < 2:
        return []
    counts = sorted(best)
    low, high = counts[0], counts[-1]
    ratio = (best[high] / best[low]) / (high / low) if best[low] else 0.0
    return ["measured instance scaling inside one server: %d -> %d instances gave %.1f -> %.1f infer/s (%.0f %% of "
            "linear); replicas are separate servers and are planned linearly" % (low, high, best[low], best[high],
                                                                                 100 * ratio)]


def find_report(repo: Path, model: str, report: Path | None = None) -> Path:
    """``report`` if given; else the newest of the model's tune report, validate's default report
    (``REPO_validation_report`` beside REPO) and ./validation_report."""
    from aitune_triton.validate.options import default_report_dir

    if report is not None:
        report = Path(report)
        return report / VALIDATE_REPORT if report.is_dir() else report
    looked = [Path(repo) / model / "tuning" / TUNE_REPORT, default_report_dir(repo) / VALIDATE_REPORT,
              Path("validation_report") / VALIDATE_REPORT]
    candidates = [p for p in looked if p.is_file()]
    if not candidates:
        raise UserError("no report found for %s (looked for %s); run validate (with perf) or tune first, or pass "
                        "--report" % (model, ", ".join(map(str, looked))))
    return max(candidates, key=lambda p: p.stat().st_mtime)


# ---------------------------------------------------------------- the plan


def plan(curve: Curve, request: PlanRequest) -> CapacityPlan:
    """Replicas and GPUs for ``request`` from ``curve`` (see the module docstring for the model)."""
    within = [p for p in curve.points if p.p99_ms <= request.p99_ms]
    if not within:
        fastest = min(curve.points, key=lambda p: p.p99_ms)
        raise UserError("no measured point of %s meets p99 <= %.2f ms (the lowest measured p99 is %.2f ms at "
                        "concurrency %d); more replicas cannot lower latency: relax --p99-ms or tune the model"
                        % (curve.model, request.p99_ms, fastest.p99_ms, fastest.concurrency))
    op = max(within, key=lambda p: p.throughput)
    gpus_per_replica = request.gpus_per_replica
    if gpus_per_replica is None:
        gpus_per_replica = 1 if curve.device == "gpu" else 0
    usable = op.throughput * (1 - request.headroom)
    replicas = max(request.min_replicas, math.ceil(request.target_rps / usable - 1e-9))
    if replicas > defaults.PLAN_MAX_REPLICAS:
        raise UserError("%s needs %d replicas for %.1f requests/s at %.1f infer/s per replica, more than %d: check the "
                        "target and the report (%s)" % (curve.model, replicas, request.target_rps, usable,
                                                       defaults.PLAN_MAX_REPLICAS, curve.source))
    warnings = list(curve.notes)
    if op is curve.points[-1] and len(curve.points) > 1:
        warnings.append("the best point within the budget is the highest concurrency measured (%d): the replica may "
                        "serve more; measure higher concurrency to tighten the plan" % op.concurrency)
    if curve.device == "cpu" and gpus_per_replica > 0:
        warnings.append("the curve was measured on CPU instances: a GPU replica's capacity is unknown until "
                        "validate/tune measure it on the GPU")
    return CapacityPlan(curve.model, request, str(curve.source), op, op.throughput, replicas, gpus_per_replica,
                        curve.instances, curve.device, curve.points, warnings=tuple(warnings))


def save_plan(path: Path, plan: CapacityPlan) -> None:
    """Write ``plan`` as JSON for ``deploy k8s --plan``; an unwritable path is one UserError line."""
    from aitune_triton.atomic import replace_file_atomically

    try:
        replace_file_atomically(Path(path), json.dumps(plan.to_dict(), indent=2) + "\n")
    except OSError as exc:
        raise UserError("cannot write the plan to %s: %s" % (path, exc.strerror or exc)) from None


def load_plan(path: Path) -> dict:
    """A plan written by ``plan --out`` (for ``deploy k8s --plan``)."""
    data = _read_json(path)

    def count(key: str, low: int, high: int) -> bool:
        v = data.get(key)
        return not isinstance(v, bool) and isinstance(v, int) and low <= v <= high

    p99 = data.get("p99_ms") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not count("replicas", 1, defaults.PLAN_MAX_REPLICAS) \
            or not count("gpus_per_replica", 0, defaults.K8S_MAX_GPUS_PER_REPLICA) \
            or isinstance(p99, bool) or not isinstance(p99, (int, float)) or not (math.isfinite(p99) and p99 > 0):
        raise UserError("%s is not a capacity plan written by `aitune-triton plan --out` (replicas 1-%d, "
                        "gpus_per_replica 0-%d, p99_ms > 0)" % (path, defaults.PLAN_MAX_REPLICAS,
                                                                defaults.K8S_MAX_GPUS_PER_REPLICA))
    return data
