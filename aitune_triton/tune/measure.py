"""Measuring tuning points with their uncertainty, on the live server.

A point (a config variant at one client concurrency) is one perf_analyzer run. perf_analyzer
measures in windows and calls a point stable when its last three windows agree within the
stability band; with ``-v`` it prints every window ("Pass [n] throughput: ..."). The windows are
kept: a point's throughput is their median and its spread their min-max, so the search can tell a
real difference from noise (``Objective.better`` compares intervals, not single numbers). A point
perf_analyzer could not stabilise keeps the median and spread of its last windows and is marked
``unstable``; one that served nothing (or timed out) is ``stalled`` and has no number at all. Neither
is ever chosen, and neither is reported as 0 infer/s.

The windows of one run underestimate the noise between runs on a shared machine (other jobs come
and go over minutes), so the finalists are re-measured back to back, interleaved (A B C A B C ...):
``remeasure`` returns each point's median over rounds and its min-max over rounds, and only those
figures decide the choice and any claim of improvement.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Sequence

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from aitune_triton.errors import PerfError, ServerError
from aitune_triton.triton import tools
from aitune_triton.triton.perf import EXIT_UNSTABLE, PerfOptions, build_perf_command, parse_csv
from aitune_triton.triton.render import check_config
from aitune_triton.triton.server_api import Server
from aitune_triton.tune.points import Measure, Measurement, Point, Remeasured, Status, Variant
from aitune_triton.tune.space import apply_variant, instance_copies, instances_on_gpu, visible_gpus
from aitune_triton.waiting import poll

log = logging.getLogger(__name__)

STABLE_WINDOWS = 3  # perf_analyzer's stability test looks at the last three windows
PASS_RE = re.compile(r"Pass \[(\d+)\] throughput: ([0-9.eE+-]+) infer/sec\. Avg latency: ([0-9.eE+-]+) usec")


def parse_passes(text: str) -> list[tuple[float, float]]:
    """(throughput infer/s, average latency ms) of every window perf_analyzer ``-v`` printed."""
    return [(float(m.group(2)), float(m.group(3)) / 1000.0) for m in PASS_RE.finditer(text)]


def from_run(point: Point, returncode: int, text: str, csv_path: Path, index: int = 0) -> Measurement:
    """The measurement of one perf_analyzer run: its last ``STABLE_WINDOWS`` windows give the
    median and the spread; the CSV (written only when it settled) gives the latency percentiles."""
    windows = parse_passes(text)[-STABLE_WINDOWS:]
    thr = [w[0] for w in windows]
    median = statistics.median(thr) if thr else None
    unstable = returncode == EXIT_UNSTABLE or (returncode != 0 and "stable measurement" in text)
    if not median:
        status = Status.STALLED if unstable or returncode == 0 else Status.FAILED
        return Measurement(point, status=status.value, detail=_last_line(text), index=index,
                           windows=tuple(thr))
    settled = Measurement(point, median, throughput_low=min(thr), throughput_high=max(thr), windows=tuple(thr),
                          index=index)
    if unstable:
        return dataclasses.replace(settled, status=Status.UNSTABLE.value, detail=_last_line(text))
    if returncode != 0 or not csv_path.exists():
        return Measurement(point, status=Status.FAILED.value, detail=_last_line(text), index=index)
    rows = parse_csv(csv_path)
    if not rows:
        return Measurement(point, status=Status.FAILED.value, detail="empty CSV %s" % csv_path, index=index)
    row = rows[0]
    # perf_analyzer prints no per-window p99: its spread is taken as the windows' average-latency spread
    lat = [w[1] for w in windows]
    mid = statistics.median(lat)
    p99_low = row.p99_ms * min(lat) / mid if mid else None
    p99_high = row.p99_ms * max(lat) / mid if mid else None
    return dataclasses.replace(settled, p50_ms=row.p50_ms, p95_ms=row.p95_ms, p99_ms=row.p99_ms, p99_low=p99_low,
                               p99_high=p99_high)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def perf_flags(perf: PerfOptions) -> dict[str, object]:
    """The perf_analyzer flags of ``perf`` that decide stability, as ``--name: value`` pairs."""
    stability = perf.stability_percentage
    flags: dict[str, object] = {"measurement-mode": perf.measurement_mode,
                                "stability-percentage": int(stability) if float(stability).is_integer() else stability,
                                "max-trials": perf.max_trials}
    if perf.measurement_mode == "count_windows":
        flags["measurement-request-count"] = perf.measurement_request_count
    else:
        flags["measurement-interval"] = perf.measurement_interval_ms
    return flags


def looser(perf: PerfOptions) -> PerfOptions:
    """The retry settings for a point that did not settle: windows twice as long, a band twice as wide
    (up to 100 %; a band the caller set wider than that is kept, never narrowed by the retry)."""
    return dataclasses.replace(perf, measurement_request_count=2 * perf.measurement_request_count,
                               measurement_interval_ms=2 * perf.measurement_interval_ms,
                               stability_percentage=max(perf.stability_percentage,
                                                        min(100, 2 * perf.stability_percentage)))


def settled_stubs(before: int | None, serving: int, instances: int, copies: int) -> int | None:
    """The stub count a reload from ``serving`` to ``instances`` settles at, given ``before`` stubs
    now and ``copies`` instances per unit of count (one per GPU the groups use); None: nothing to
    wait for. Only Python-backend instances have stubs: ``before`` 0 (ONNX, TensorRT, libtorch)
    means none will come or go, and a wait for a negative count would time out on every load."""
    if not before:
        return None
    return max(before - serving * copies, 0) + instances * copies


def effective_variant(server: Server, model: str) -> Variant:
    """What the server says it runs (GET /v2/models/M/config), preferred batch sizes included, so
    a write-back is checked against every setting a variant holds."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        cfg = client.get_model_config(model)
    except InferenceServerException as exc:
        raise ServerError("reading the config of %r failed: %s" % (model, exc.message())) from exc
    finally:
        client.close()
    count = (cfg.get("instance_group") or [{}])[0].get("count", 1)
    if not cfg.get("max_batch_size") or "dynamic_batching" not in cfg:
        return Variant(count, None)
    batcher = cfg.get("dynamic_batching") or {}
    return Variant(count, int(batcher.get("max_queue_delay_microseconds", 0)),
                   tuple(int(b) for b in batcher.get("preferred_batch_size", ())))


class LiveRunner:
    """Measures points on the server: reloads the model only when the variant changes, retries
    a point that did not settle once with looser settings, and remembers which settings made the
    points stable (for the Model Analyzer hand-off)."""

    def __init__(self, server: Server, model: str, base: model_config_pb2.ModelConfig, max_batch_size: int,
                 num_profiles: int, perf: PerfOptions, workdir: Path, output_bytes: int | None = None):
        self.server, self.model, self.base = server, model, base
        self.max_batch_size, self.num_profiles = max_batch_size, num_profiles
        self.perf, self.workdir = perf, workdir
        # the largest output of one request, in bytes: perf_analyzer's shared-memory output regions
        # default to 100 KB, too small for e.g. an encoder's hidden states
        self.output_bytes = output_bytes
        self.loaded: Variant | None = None
        self._visible: int | None = None  # GPUs the embedded server sees, detected when a reload needs it
        self.loads = 0
        self.count = 0
        self.serving = 0
        self.stable_at: list[int] = []  # per settled point: 0 = the first settings, 1 = the looser retry
        if server.model_ready(model):
            self.serving = effective_variant(server, model).instances
        grpc = getattr(server, "grpc_url", None)
        if perf.protocol == "grpc" and grpc:
            self.url = grpc
        else:
            self.url, self.perf = server.http_url, dataclasses.replace(perf, protocol="http")

    def _stubs(self) -> int | None:
        children = getattr(self.server, "children", None)
        return len(children()) if children else None

    def _settle(self, expected: int | None, timeout_s: float = 10.0) -> None:
        """Wait for the replaced instances' stub processes to exit: Triton unloads the old
        version after the load call returns, and its teardown would be measured as noise."""
        if expected is not None:
            poll(lambda: (self._stubs() or 0) <= expected, timeout_s, 0.1)

    def _copies(self, cfg: model_config_pb2.ModelConfig) -> int:
        """Instances per unit of count. Stubs are counted only for the embedded server, which
        inherits this process's GPUs (nvidia-smi, CUDA_VISIBLE_DEVICES), so those are what it places
        GPU instances on, whatever ``--visible-gpus`` told the search."""
        if self._visible is None:
            self._visible = visible_gpus() if instances_on_gpu(cfg) else 0
        return instance_copies(cfg, self._visible)

    def load(self, variant: Variant) -> None:
        cfg = apply_variant(self.base, variant, self.max_batch_size)
        check_config(cfg, self.num_profiles)
        self.loaded = None
        before = self._stubs()
        t0 = time.monotonic()
        self.server.load_model(self.model, config_json=json_format.MessageToJson(cfg, preserving_proto_field_name=True))
        self.loads += 1
        self.loaded = variant
        self._settle(settled_stubs(before, self.serving, variant.instances, self._copies(cfg) if before else 1))
        self.serving = variant.instances
        log.info("loaded %s with %s in %.1f s", self.model, variant.label(), time.monotonic() - t0)

    def stable_perf(self) -> PerfOptions:
        """The settings that made the points settle here: the looser retry if any point needed it."""
        return looser(self.perf) if any(self.stable_at) else self.perf

    def _run(self, point: Point, perf: PerfOptions, workdir: Path) -> Measurement:
        binary = tools.find_perf_analyzer()
        if binary is None:
            raise PerfError("perf_analyzer not found: run `python -m aitune_triton.triton.tools install`")
        workdir.mkdir(parents=True, exist_ok=True)
        csv_path = workdir / ("%s_c%d.csv" % (self.model, point.concurrency))
        csv_path.unlink(missing_ok=True)
        cmd = build_perf_command(self.model, self.url, perf, csv_path, concurrency=(point.concurrency,),
                                 perf_analyzer=binary) + ["-v"]
        log.debug("perf_analyzer: %s", " ".join(cmd))
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=perf.timeout_s)
        except subprocess.TimeoutExpired as exc:
            text = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            stalled = from_run(point, EXIT_UNSTABLE, text, csv_path, self.count)
            return dataclasses.replace(stalled, status=Status.STALLED.value if not stalled.throughput
                                       else Status.UNSTABLE.value,
                                       detail="perf_analyzer timed out after %.0f s" % perf.timeout_s)
        text = out.stdout + out.stderr
        (workdir / "perf_analyzer.log").write_text(" ".join(cmd) + "\n" + text)
        return from_run(point, out.returncode, text, csv_path, self.count)

    def __call__(self, point: Point) -> Measurement:
        self.count += 1
        if self.loaded != point.variant:
            try:
                self.load(point.variant)
            except ServerError as exc:
                log.warning("variant %s failed to load: %s", point.variant.label(), exc)
                return Measurement(point, status=Status.FAILED.value, detail="load: %s" % str(exc)[:400],
                                   index=self.count)
        perf = dataclasses.replace(self.perf, concurrency=(point.concurrency,), shared_memory=point.transport)
        if point.transport != "none" and self.output_bytes:
            perf = dataclasses.replace(perf, extra_args=perf.extra_args + (
                "--output-shared-memory-size", str(max(self.output_bytes, 102400))))
        m = self._run(point, perf, self.workdir / ("%03d" % self.count))
        if m.status in (Status.UNSTABLE.value, Status.STALLED.value):
            m = self._run(point, looser(perf), self.workdir / ("%03d_retry" % self.count))
            if m.ok:
                self.stable_at.append(1)
        elif m.ok:
            self.stable_at.append(0)
        if m.ok:
            log.info("measured %s: %.1f infer/s (windows %.1f-%.1f), p99 %.2f ms", point.label(), m.throughput,
                     m.lo, m.hi, m.p99_ms)
        else:
            log.info("measured %s: %s", point.label(), m.status)
        return m


def remeasure(measure: Measure, points: Sequence[Point], rounds: int) -> list[Remeasured]:
    """Each point measured ``rounds`` times, interleaved (A B C A B C ...), so that a slow phase of
    the machine hits every point alike."""
    runs: list[list[Measurement]] = [[] for _ in points]
    for _ in range(rounds):
        for i, point in enumerate(points):
            runs[i].append(measure(point))
    return [Remeasured(p, tuple(r)) for p, r in zip(points, runs, strict=True)]
