"""What a tuning point is and what measuring it gave: the types the search, the decision and
the reports share, with no server, perf_analyzer or protobuf behind them.

A ``Variant`` is the config part of a point (instance count, queue delay, preferred batch sizes),
a ``Point`` adds how the client loads it (concurrency, transport), a ``Measurement`` is one
perf_analyzer run of a point (median and min-max spread of its windows, or a status saying why
there are no figures), and ``Remeasured`` is a finalist measured in interleaved rounds.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable


class Status(str, Enum):
    """How a point's measurement ended."""

    OK = "ok"  # perf_analyzer settled: median and spread of its stable windows
    UNSTABLE = "unstable"  # never settled: median and spread of its last windows, not comparable
    STALLED = "stalled"  # nothing served (no window with throughput, or a timeout): no figures
    FAILED = "failed"  # the variant did not load or perf_analyzer failed


@dataclass(frozen=True)
class Variant:
    """The config.pbtxt part of a point. ``delay_us`` None: the model does not batch."""

    instances: int
    delay_us: int | None
    preferred: tuple[int, ...] = ()

    def label(self) -> str:
        parts = ["%d inst" % self.instances]
        if self.delay_us is not None:
            parts.append("delay %d us" % self.delay_us)
        if self.preferred:
            parts.append("preferred %s" % list(self.preferred))
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"instances": self.instances, "max_queue_delay_us": self.delay_us, "preferred": list(self.preferred)}


TRANSPORTS = {"none": "plain messages", "system": "system shared memory", "cuda": "CUDA shared memory"}


@dataclass(frozen=True)
class Point:
    """A variant measured at one client concurrency over one client transport (perf_analyzer's
    ``--shared-memory``). Concurrency and transport are how the client loads the server, not part
    of the config: changing them needs no reload, and the written config never depends on them."""

    variant: Variant
    concurrency: int
    transport: str = "none"

    def value(self, dim: str) -> Any:
        if dim in ("concurrency", "transport"):
            return getattr(self, dim)
        return getattr(self.variant, dim)

    def replace(self, dim: str, value: Any) -> "Point":
        if dim in ("concurrency", "transport"):
            return dataclasses.replace(self, **{dim: value})
        return dataclasses.replace(self, variant=dataclasses.replace(self.variant, **{dim: value}))

    def label(self) -> str:
        shm = "" if self.transport == "none" else ", %s" % TRANSPORTS[self.transport]
        return "%s @ c=%d%s" % (self.variant.label(), self.concurrency, shm)

    def to_dict(self) -> dict:
        return {**self.variant.to_dict(), "concurrency": self.concurrency, "transport": self.transport}


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class Measurement:
    """One point measured. ``throughput`` is the median over windows (or over re-measurement
    rounds), ``throughput_low``/``_high`` its spread (min-max; None: a single value). Figures are
    None when nothing was measured (stalled, failed)."""

    point: Point
    throughput: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    status: str = Status.OK.value
    detail: str = ""
    index: int = 0
    throughput_low: float | None = None
    throughput_high: float | None = None
    p99_low: float | None = None
    p99_high: float | None = None
    windows: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status).value)

    @property
    def ok(self) -> bool:
        return self.status == Status.OK.value

    def figures(self) -> tuple[float, float]:
        """(median throughput, p99 ms) of a measurement that has both (every ``ok`` one); callers
        check ``ok`` first, so a missing figure is a bug, never a 0."""
        if self.throughput is None or self.p99_ms is None:
            raise ValueError("%s has no figures (%s)" % (self.point.label(), self.status))
        return self.throughput, self.p99_ms

    @property
    def lo(self) -> float:
        return self.throughput_low if self.throughput_low is not None else (self.throughput or 0.0)

    @property
    def hi(self) -> float:
        return self.throughput_high if self.throughput_high is not None else (self.throughput or 0.0)

    @property
    def p99_lo(self) -> float:
        return self.p99_low if self.p99_low is not None else (self.p99_ms or 0.0)

    @property
    def p99_hi(self) -> float:
        return self.p99_high if self.p99_high is not None else (self.p99_ms or 0.0)

    def spread_pct(self) -> float | None:
        """(max - min) / median over the windows or rounds, in percent."""
        if not self.throughput or self.throughput_low is None or self.throughput_high is None:
            return None
        return 100.0 * (self.throughput_high - self.throughput_low) / self.throughput

    def to_dict(self) -> dict:
        return {**self.point.to_dict(), "throughput": _r(self.throughput, 1),
                "throughput_low": _r(self.throughput_low, 1),
                "throughput_high": _r(self.throughput_high, 1), "spread_pct": _r(self.spread_pct(), 1),
                "p50_ms": _r(self.p50_ms, 3), "p95_ms": _r(self.p95_ms, 3), "p99_ms": _r(self.p99_ms, 3),
                "p99_low": _r(self.p99_low, 3), "p99_high": _r(self.p99_high, 3),
                "windows": [round(w, 1) for w in self.windows], "status": self.status, "detail": self.detail,
                "index": self.index}


Measure = Callable[[Point], Measurement]


@dataclass(frozen=True)
class Remeasured:
    """One finalist measured in several interleaved rounds."""

    point: Point
    runs: tuple[Measurement, ...] = field(default_factory=tuple)

    def summary(self) -> Measurement:
        """Median over the rounds that settled, min-max over them as the spread; ok only when at
        least half the rounds settled."""
        ok = [r for r in self.runs if r.ok]
        if not ok:
            thr = [r.throughput for r in self.runs if r.throughput]
            status = Status.UNSTABLE if thr else Status.STALLED
            return Measurement(self.point, statistics.median(thr) if thr else None, status=status.value,
                               detail="no round settled", throughput_low=min(thr) if thr else None,
                               throughput_high=max(thr) if thr else None, windows=tuple(thr))
        thr = [r.figures()[0] for r in ok]
        p99 = [r.figures()[1] for r in ok]
        p50 = [r.p50_ms for r in ok if r.p50_ms is not None]
        p95 = [r.p95_ms for r in ok if r.p95_ms is not None]
        status = Status.OK if 2 * len(ok) >= len(self.runs) else Status.UNSTABLE
        return Measurement(self.point, statistics.median(thr), statistics.median(p50) if p50 else None,
                           statistics.median(p95) if p95 else None, statistics.median(p99), status=status.value,
                           detail="%d of %d rounds settled" % (len(ok), len(self.runs)),
                           throughput_low=min(thr), throughput_high=max(thr), p99_low=min(p99), p99_high=max(p99),
                           windows=tuple(thr))

    def to_dict(self) -> dict:
        return {**self.summary().to_dict(), "rounds": [r.to_dict() for r in self.runs]}
