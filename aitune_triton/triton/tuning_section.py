"""The manifest's ``tuning`` section: what generate's stage-1 selection and the last ``tune`` chose;
and its ``history``: one entry per config ``tune`` replaced.

The JSON is the one ``manifest.json`` has always held: generate writes ``{"stage1": <the
candidate table>}``; ``tune`` writes its summary's keys at the top level (the chosen point, the
grid, the reason, where the report and the backup are), and the stage-1 record is kept beside
it. It lives beside the manifest, not in ``tune/``, so the manifest never imports a later step of
the pipeline; no heavy imports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from aitune_triton.json_fields import typed

STAGE1 = "stage1"


def _check(value: Any, kinds: tuple[type, ...], what: str, section: str = "tuning") -> Any:
    return typed(value, kinds, "%s.%s" % (section, what))


@dataclass(frozen=True)
class TuneSummary:
    """The last ``tune`` run as the manifest records it (``tune_report.json`` has every point).
    The first five keys are required; earlier releases wrote fewer of the others."""

    model: str
    mode: str  # "quick" or "brute"
    chosen: dict[str, Any] | None  # the chosen point's summary over the re-measurement rounds
    written: bool
    reason: str
    time: str = ""
    objective: dict[str, Any] = dataclasses.field(default_factory=dict)
    space: dict[str, Any] = dataclasses.field(default_factory=dict)
    grid_size: int = 0
    measured: int = 0
    loads: int = 0
    baseline: dict[str, Any] | None = None  # the current config's summary in the same rounds
    previous: dict[str, Any] = dataclasses.field(default_factory=dict)
    elapsed_s: float = 0.0
    config_path: str = "config.pbtxt"  # relative to the model directory
    backup_path: str | None = None
    report_dir: str = ""  # relative to the model directory where it lies inside it
    placement: dict[str, Any] = dataclasses.field(default_factory=dict)
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    remeasured: int = 0
    improvement: float | None = None  # None: no claim of improvement
    ties: tuple[dict[str, Any], ...] = ()
    perf_analyzer_flags: dict[str, Any] = dataclasses.field(default_factory=dict)
    load_avg: tuple[float, ...] = ()
    tool_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ties"], d["load_avg"] = list(self.ties), list(self.load_avg)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TuneSummary":
        kinds: dict[str, tuple[type, ...]] = {
            "time": (str,), "model": (str,), "objective": (dict,), "mode": (str,), "space": (dict,),
            "grid_size": (int,), "measured": (int,), "loads": (int,), "chosen": (dict, type(None)),
            "baseline": (dict, type(None)), "previous": (dict,), "written": (bool,), "reason": (str,),
            "elapsed_s": (int, float), "config_path": (str,), "backup_path": (str, type(None)),
            "report_dir": (str,), "placement": (dict,), "statuses": (dict,), "remeasured": (int,),
            "improvement": (int, float, type(None)), "ties": (list,), "perf_analyzer_flags": (dict,),
            "load_avg": (list,), "tool_version": (str,)}
        defaults = {f.name for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
        missing = [k for k in kinds if k not in d and k not in defaults]
        if missing:
            raise KeyError("tuning: %s missing" % ", ".join(missing))
        values = {k: _check(d[k], kinds[k], k) for k in kinds if k in d}
        if "ties" in values:
            values["ties"] = tuple(_check(t, (dict,), "ties[]") for t in values["ties"])
        if "load_avg" in values:
            values["load_avg"] = tuple(float(_check(v, (int, float), "load_avg[]")) for v in values["load_avg"])
        return cls(**values)


@dataclass(frozen=True)
class TuningSection:
    """``stage1``: generate's candidate selection table (``SelectionResult.to_dict()``), None when
    generate did not select; ``last``: the last ``tune`` run, None before the first."""

    stage1: dict[str, Any] | None = None
    last: TuneSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = self.last.to_dict() if self.last else {}
        if self.stage1 is not None:
            d[STAGE1] = self.stage1
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TuningSection":
        _check(d, (dict,), "section")
        rest = {k: v for k, v in d.items() if k != STAGE1}
        stage1 = _check(d.get(STAGE1), (dict, type(None)), STAGE1)
        return cls(stage1=stage1, last=TuneSummary.from_dict(rest) if rest else None)


TUNE_EVENT = "tune"


@dataclass(frozen=True)
class TuneHistoryEntry:
    """One config ``tune`` replaced, kept in the manifest's ``history`` because ``config.pbtxt.bak``
    holds only the latest previous text: when, the previous text and variant, and what replaced it
    for which objective. Every key is required; an unknown key is refused rather than dropped on
    the next save."""

    time: str
    backup: str  # the backup file written beside config.pbtxt, relative to the model directory
    previous: dict[str, Any]  # the replaced variant (Variant.to_dict())
    chosen: dict[str, Any]  # the point written (Point.to_dict())
    objective: dict[str, Any]  # Objective.to_dict()
    previous_config: str  # the replaced config.pbtxt, byte for byte
    event: str = TUNE_EVENT  # the one event written so far; kept so other kinds can follow

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TuneHistoryEntry":
        _check(d, (dict,), "[]", "history")
        kinds: dict[str, tuple[type, ...]] = {
            "time": (str,), "backup": (str,), "previous": (dict,), "chosen": (dict,), "objective": (dict,),
            "previous_config": (str,), "event": (str,)}
        missing = [k for k in kinds if k not in d]
        if missing:
            raise KeyError("history[]: %s missing" % ", ".join(missing))
        unknown = sorted(set(d) - set(kinds))
        if unknown:
            raise KeyError("history[]: unknown key(s) %s" % ", ".join(unknown))
        if d["event"] != TUNE_EVENT:
            raise ValueError("history entry: unknown event %r (expected %r)" % (d["event"], TUNE_EVENT))
        return cls(**{k: _check(d[k], kinds[k], "[].%s" % k, "history") for k in kinds})
