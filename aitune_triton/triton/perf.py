"""Run perf_analyzer against a served model and read its CSV.

Each concurrency value is a separate perf_analyzer invocation: when perf_analyzer cannot
stabilise a point it exits with code 2 and writes no CSV at all, which on a busy 2-core box would
otherwise throw away every point of the sweep. Unstable points are reported as such; any other
failure raises ``PerfError`` quoting perf_analyzer.
"""

from __future__ import annotations

import base64
import csv
import json
import logging
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from aitune_triton import defaults
from aitune_triton.triton import tools
from aitune_triton.errors import PerfError

log = logging.getLogger(__name__)

EXIT_UNSTABLE = 2  # perf_analyzer's STABILITY_ERROR
SHARED_MEMORY_KINDS = ("none", "system", "cuda")


@dataclass(frozen=True)
class PerfOptions:
    """One sweep. Defaults favour stable numbers on small shared machines over speed."""

    concurrency: tuple[int, ...] = (1, 2, 4)
    protocol: str = "grpc"
    shared_memory: str = "none"
    measurement_mode: str = "count_windows"
    measurement_request_count: int = defaults.PERF_REQUEST_COUNT
    measurement_interval_ms: int = 5000
    max_trials: int = 10
    stability_percentage: float = defaults.PERF_STABILITY_PCT
    batch_size: int = 1
    timeout_s: float = 300
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict, hash=False)
    input_data: Path | None = None
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class PerfRow:
    """One measured point; latencies as perf_analyzer's client sees them, stage times from the server."""

    concurrency: int
    throughput: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_latency_ms: float | None
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    client_send_us: float
    client_recv_us: float


@dataclass(frozen=True)
class PerfResult:
    model: str
    rows: tuple[PerfRow, ...]
    unstable: tuple[int, ...] = ()
    stdout_tail: str = ""
    csv_paths: tuple[Path, ...] = ()

    @property
    def ok(self) -> bool:
        """At least one point was measured."""
        return bool(self.rows)

    def best(self) -> PerfRow | None:
        return max(self.rows, key=lambda r: r.throughput, default=None)


def build_perf_command(
    model: str, url: str, options: PerfOptions, csv_path: Path, *, concurrency: Sequence[int] | None = None,
    perf_analyzer: Path | None = None,
) -> list[str]:
    """perf_analyzer argv for ``concurrency`` (default: all of ``options.concurrency``, as a range
    when evenly spaced). Launches nothing."""
    if options.shared_memory not in SHARED_MEMORY_KINDS:
        raise ValueError("shared_memory must be one of %s" % (SHARED_MEMORY_KINDS,))
    if options.protocol not in ("grpc", "http"):
        raise ValueError("protocol must be 'grpc' or 'http'")
    levels = tuple(concurrency if concurrency is not None else options.concurrency)
    if not levels or min(levels) < 1:
        raise ValueError("concurrency values must be >= 1")
    binary = perf_analyzer or tools.find_perf_analyzer() or Path("perf_analyzer")
    cmd = [
        str(binary), "-m", model, "-i", options.protocol, "-u", url, "-b", str(options.batch_size),
        "--concurrency-range", _concurrency_range(levels),
        "--max-trials", str(options.max_trials), "-s", "%g" % options.stability_percentage,
        "--measurement-mode", options.measurement_mode,
    ]
    if options.measurement_mode == "count_windows":
        cmd += ["--measurement-request-count", str(options.measurement_request_count)]
    else:
        cmd += ["-p", str(options.measurement_interval_ms)]
    if options.shared_memory != "none":
        cmd += ["--shared-memory", options.shared_memory]
    for name, dims in options.shapes.items():
        cmd += ["--shape", "%s:%s" % (name, ",".join(str(int(d)) for d in dims))]
    if options.input_data is not None:
        cmd += ["--input-data", str(options.input_data)]
    cmd += ["-f", str(csv_path), "--verbose-csv"]
    cmd += list(options.extra_args)
    return cmd


def _concurrency_range(levels: tuple[int, ...]) -> str:
    if len(levels) == 1:
        return "%d:%d" % (levels[0], levels[0])
    step = levels[1] - levels[0]
    if step > 0 and all(b - a == step for a, b in zip(levels, levels[1:], strict=False)):
        return "%d:%d:%d" % (levels[0], levels[-1], step)
    raise ValueError("concurrency %s is not evenly spaced; run the values one by one" % (levels,))


def _num(row: Mapping[str, str], key: str) -> float | None:
    value = (row.get(key) or "").strip()
    return float(value) if value else None


def parse_csv(path: Path) -> list[PerfRow]:
    """Rows of a perf_analyzer concurrency CSV (times there are µs), sorted by concurrency."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "Concurrency" not in reader.fieldnames:
            raise PerfError("%s is not a perf_analyzer concurrency CSV (header %s)" % (path, reader.fieldnames))
        rows = []
        for raw in reader:
            if not (raw.get("Concurrency") or "").strip():
                continue
            def get(key: str, row: Mapping[str, str] = raw) -> float:
                return _num(row, key) or 0.0

            avg = _num(raw, "Avg latency")
            rows.append(PerfRow(
                concurrency=int(float(raw["Concurrency"])),
                throughput=get("Inferences/Second"),
                p50_ms=get("p50 latency") / 1000.0,
                p90_ms=get("p90 latency") / 1000.0,
                p95_ms=get("p95 latency") / 1000.0,
                p99_ms=get("p99 latency") / 1000.0,
                avg_latency_ms=avg / 1000.0 if avg is not None else None,
                queue_us=get("Server Queue"),
                compute_input_us=get("Server Compute Input"),
                compute_infer_us=get("Server Compute Infer"),
                compute_output_us=get("Server Compute Output"),
                client_send_us=get("Client Send"),
                client_recv_us=get("Client Recv"),
            ))
    return sorted(rows, key=lambda r: r.concurrency)


def _tail(text: str, n: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


# perf_analyzer's own error lines ("Thread [0] had error: ...", "error: failed to ...", "Failed to obtain
# stable measurement"); its banner ("Successfully read data ...", "*** Measurement Settings ***") is not one
_ERROR_LINE = re.compile(r"error|failed|fail to|timed? ?out|timeout|deadline|unavailable|not healthy|refused", re.I)


def failure_cause(text: str) -> str | None:
    """The line of perf_analyzer's output that says why it failed: the last error line, prefixed by
    the "Failed to ..." summary before it when that is a different line; None when there is none."""
    lines = [line.strip() for line in text.splitlines() if _ERROR_LINE.search(line)]
    if not lines:
        return None
    last = lines[-1]
    summary = next((line for line in lines if line.lower().startswith("failed") and line != last), None)
    return "%s %s" % (summary, last) if summary and len(summary) + len(last) < 300 else last


def run_perf(
    model: str,
    url: str,
    options: PerfOptions | None = None,
    *,
    workdir: Path | None = None,
    perf_analyzer: Path | None = None,
) -> PerfResult:
    """Measure ``model`` at each concurrency value; CSVs go to ``workdir`` (a temp dir if None).
    ``options`` None: ``PerfOptions()``'s defaults."""
    options = PerfOptions() if options is None else options
    binary = perf_analyzer or tools.find_perf_analyzer()
    if binary is None:
        raise PerfError("perf_analyzer not found: run `python -m aitune_triton.triton.tools install`")
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="perf-%s-" % model))
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[PerfRow] = []
    unstable: list[int] = []
    tails: list[str] = []
    paths: list[Path] = []

    def partial() -> PerfResult:
        return PerfResult(model, tuple(rows), tuple(unstable), "\n".join(tails), tuple(paths))

    for level in options.concurrency:
        csv_path = workdir / ("%s_c%d.csv" % (model, level))
        csv_path.unlink(missing_ok=True)
        cmd = build_perf_command(model, url, options, csv_path, concurrency=(level,), perf_analyzer=binary)
        log.info("perf_analyzer: %s", " ".join(cmd))
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=options.timeout_s)
        except subprocess.TimeoutExpired as exc:
            text = "".join((part or b"").decode(errors="replace") if isinstance(part, bytes) else (part or "")
                           for part in (exc.stdout, exc.stderr))
            cause = failure_cause(text)
            raise PerfError("perf_analyzer timed out after %.0f s at concurrency %d: %s\n%s"
                            % (options.timeout_s, level, cause or "no responses from the model in that time (a "
                               "stalled server or model instance?)", _tail(text)), partial()) from exc
        text = out.stdout + out.stderr
        tails.append("[concurrency %d, exit %d]\n%s" % (level, out.returncode, _tail(text, 12)))
        if out.returncode == EXIT_UNSTABLE or (out.returncode != 0 and "stable measurement" in text):
            log.warning("perf_analyzer could not stabilise %s at concurrency %d", model, level)
            unstable.append(level)
            continue
        if out.returncode != 0 or not csv_path.exists():
            raise PerfError("perf_analyzer failed (exit %d) at concurrency %d: %s\n%s"
                            % (out.returncode, level, failure_cause(text) or "no error line in its output (below)",
                               _tail(text, 15)), partial())
        rows.extend(parse_csv(csv_path))
        paths.append(csv_path)
    return partial()


def _utf8(values: np.ndarray) -> bool:
    try:
        for v in values.tolist():
            if isinstance(v, bytes):
                v.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _request_entry(sample: Mapping[str, np.ndarray], has_batch_dim: bool) -> dict:
    entry = {}
    for name, value in sample.items():
        arr = np.asarray(value)
        if has_batch_dim:
            if arr.ndim == 0 or arr.shape[0] != 1:
                raise ValueError("input %r: expected a leading batch dim of 1, got shape %s" % (name, arr.shape))
            arr = arr[0]
        flat = arr.reshape(-1)
        content: Any
        if arr.dtype.kind in "SO" and not _utf8(flat):
            # binary strings (an encoded image): the tensor serialised as Triton sends BYTES, base64
            from tritonclient.utils import serialize_byte_tensor

            content = {"b64": base64.b64encode(serialize_byte_tensor(flat.astype(object)).item()).decode()}
        elif arr.dtype.kind in "SO":
            content = [v.decode() if isinstance(v, bytes) else str(v) for v in flat.tolist()]
        elif arr.dtype.itemsize == 2 and arr.dtype.kind in "fV":
            # perf_analyzer takes no explicit values for FP16/BF16 tensors: their raw bytes, base64
            content = {"b64": base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode()}
        else:
            content = flat.tolist()
        entry[name] = {"content": content, "shape": list(arr.shape)}
    return entry


def write_input_data_json(
    samples: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    path: Path,
    *,
    has_batch_dim: bool = True,
) -> Path:
    """Write perf_analyzer ``--input-data`` JSON from one request's inputs or a list of them.

    Arrays carry a leading batch dim of 1 (dropped: perf_analyzer's ``shape`` excludes the batch
    dim and ``-b`` replicates the sample) unless ``has_batch_dim`` is False (models with
    max_batch_size 0). perf_analyzer uses the entries round-robin.
    """
    requests = [samples] if isinstance(samples, Mapping) else list(samples)
    if not requests:
        raise ValueError("no samples")
    data = {"data": [_request_entry(s, has_batch_dim) for s in requests]}
    path = Path(path)
    path.write_text(json.dumps(data))
    return path
