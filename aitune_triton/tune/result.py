"""What one ``tune`` run measured, chose and wrote: the object the reports and the manifest read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aitune_triton.tune.objective import Objective
from aitune_triton.tune.points import Measurement, Point, Remeasured, Variant
from aitune_triton.tune.space import SearchSpace
from aitune_triton.version import __version__


@dataclass(frozen=True)
class TuneResult:
    """What was measured, what was chosen, and where it was written."""

    model: str
    objective: Objective
    space: SearchSpace
    mode: str
    measurements: tuple[Measurement, ...]
    chosen: Measurement | None
    baseline: Measurement | None
    previous: Variant
    loads: int
    written: bool
    reason: str
    elapsed_s: float
    config_path: Path
    backup_path: Path | None = None
    reports: dict[str, Path] = field(default_factory=dict)
    placement: dict[str, Any] = field(default_factory=dict)  # placement() of the chosen (or previous) instance count
    finalists: tuple[Remeasured, ...] = ()  # the interleaved re-measurement that chose
    improvement: float | None = None  # chosen vs current config in those rounds; None: no claim
    ties: tuple[Point, ...] = ()  # finalists within the chosen one's spread
    perf_flags: dict[str, Any] = field(default_factory=dict)  # perf_analyzer settings that made points settle here
    load_avg: tuple[float, ...] = ()  # 1-minute load average at the start and the end (the noise's cause)

    @property
    def measured(self) -> int:
        return len(self.measurements)

    @property
    def remeasured(self) -> int:
        return sum(len(f.runs) for f in self.finalists)

    @property
    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.measurements:
            counts[m.status] = counts.get(m.status, 0) + 1
        return counts

    @property
    def grid_size(self) -> int:
        return self.space.size

    def to_dict(self) -> dict:
        return {"model": self.model, "objective": self.objective.to_dict(), "mode": self.mode,
                "space": self.space.to_dict(), "grid_size": self.grid_size, "measured": self.measured,
                "loads": self.loads, "chosen": self.chosen.to_dict() if self.chosen else None,
                "baseline": self.baseline.to_dict() if self.baseline else None, "previous": self.previous.to_dict(),
                "written": self.written, "reason": self.reason, "elapsed_s": round(self.elapsed_s, 1),
                "config_path": str(self.config_path),
                "backup_path": str(self.backup_path) if self.backup_path else None,
                "placement": self.placement, "statuses": self.status_counts,
                "finalists": [f.to_dict() for f in self.finalists], "remeasured": self.remeasured,
                "improvement": None if self.improvement is None else round(self.improvement, 3),
                "ties": [p.to_dict() for p in self.ties], "perf_analyzer_flags": self.perf_flags,
                "load_avg": [round(v, 2) for v in self.load_avg],
                "measurements": [m.to_dict() for m in self.measurements], "tool_version": __version__}
