"""What ``tune`` searches and how it judges: ``TuneOptions`` and the parsers of its text options.

Kept apart from the search itself so that the grid (``tune.space``) and the search
(``tune.search``) both read the options without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aitune_triton import defaults
from aitune_triton.errors import UserError
from aitune_triton.output_paths import check_output_dir, check_output_file
from aitune_triton.triton.perf import PerfOptions
from aitune_triton.tune.objective import Objective
from aitune_triton.tune.points import TRANSPORTS


# the reports' folder inside the model directory, where tune writes them unless told otherwise
REPORT_SUBDIR = "tuning"


def lasting_report_dir(repo: str, model: str) -> Path:
    """Where the reports of an ``s3://`` REPO are copied: ``<last segment>_tune_report/<model>`` in
    the current directory (as validate names its report). The repository is tuned in a temporary
    download, so its own ``<model>/tuning`` (pushed with the tuned version) is gone once tune returns."""
    return Path("%s_tune_report" % str(repo).rstrip("/").rsplit("/", 1)[-1]) / model


def tune_perf_options(stability_pct: float = defaults.TUNE_PERF_STABILITY_PCT) -> PerfOptions:
    # time windows bound the cost of a point whatever its throughput (a 40 infer/s variant would
    # need 8 s per 300-request window); 1 s windows and a 30 % band settle on a busy 2-core box in
    # 3-6 s, and an unstable point is retried once with windows twice as long and a looser band
    if not 0 < stability_pct <= 100:
        raise UserError("--perf-stability must be in (0, 100], got %g" % stability_pct)
    return PerfOptions(measurement_mode="time_windows", measurement_interval_ms=1000,
                       stability_percentage=stability_pct, max_trials=6, timeout_s=180)


def check_transports(transports: tuple[str, ...], gpus: int) -> None:
    """Known, distinct perf_analyzer shared-memory modes; ``cuda`` only where a GPU is visible."""
    unknown = [t for t in transports if t not in TRANSPORTS]
    if unknown or not transports or len(set(transports)) != len(transports):
        raise UserError("transports must be distinct values of %s, got %s" % (", ".join(TRANSPORTS),
                                                                              ",".join(transports) or "nothing"))
    if "cuda" in transports and gpus < 1:
        raise UserError("transport cuda (CUDA shared memory) needs a GPU visible to the server; none is "
                        "(pass --visible-gpus N if detection is wrong, or use --transports none,system)")


def parse_transports(text: str) -> tuple[str, ...] | None:
    """``--transports``: ``auto`` (None: decided by ``build_space``) or comma-separated modes."""
    if text.strip() == "auto":
        return None
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    check_transports(values, 1)  # cuda is checked against the GPUs once they are known
    return values


def parse_visible_gpus(text: str) -> int | None:
    """``--visible-gpus``: ``auto`` (None: detected) or a count >= 0."""
    if text.strip() == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        raise UserError("--visible-gpus takes auto or a GPU count, got %r" % text) from None
    if count < 0:
        raise UserError("--visible-gpus must be >= 0, got %d" % count)
    return count


@dataclass(frozen=True)
class TuneOptions:
    """What to search and how to judge it (see the module docstring)."""

    objective: str = "max-throughput"
    budget_ms: float | None = None
    min_throughput: float | None = None
    instances: tuple[int, ...] = defaults.TUNE_INSTANCES
    delays_us: tuple[int, ...] = defaults.TUNE_DELAYS_US
    concurrency: tuple[int, ...] = defaults.TUNE_CONCURRENCY
    search_preferred: bool = True
    brute: bool = False
    min_gain: float = 0.03
    max_measurements: int | None = None  # the quick search's cap; None: quick_budget(grid size)
    finalists: int = 2  # configs re-measured before choosing (plus the current config)
    rounds: int = 3  # interleaved re-measurement rounds of the finalists
    perf: PerfOptions = field(default_factory=tune_perf_options)
    report_dir: Path | None = None
    lock_wait_s: float = 0.0
    export_model_analyzer: Path | None = None  # also write a Model Analyzer profile config here
    # client transports (perf_analyzer --shared-memory) to search; None: none/system/cuda where the
    # instances are on visible GPUs, else perf.shared_memory alone
    transports: tuple[str, ...] | None = None
    visible_gpus: int | None = None  # GPUs the server sees; None: detect (nvidia-smi -L, CUDA_VISIBLE_DEVICES)

    def __post_init__(self) -> None:
        for name in ("instances", "delays_us", "concurrency"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if any(d < 0 for d in self.delays_us):
            raise UserError("queue delays must be >= 0 us")
        if not 0 <= self.min_gain < 1:
            raise UserError("min_gain must be in [0, 1), got %r" % self.min_gain)
        if self.finalists < 1 or self.rounds < 1:
            raise UserError("finalists and rounds must be >= 1, got %r and %r" % (self.finalists, self.rounds))
        if self.max_measurements is not None and self.max_measurements < 1:
            raise UserError("max_measurements must be >= 1, got %r" % self.max_measurements)
        if self.visible_gpus is not None and self.visible_gpus < 0:
            raise UserError("visible GPUs must be >= 0, got %r" % self.visible_gpus)
        if self.transports is not None:
            object.__setattr__(self, "transports", tuple(self.transports))
            check_transports(self.transports, 1 if self.visible_gpus is None else self.visible_gpus)
        self.objective_spec()
        # before the server starts: an unwritable path would otherwise fail after the whole search
        if self.report_dir is not None:
            check_output_dir(self.report_dir, "the tuning report")
        if self.export_model_analyzer is not None:
            check_output_file(self.export_model_analyzer, "the Model Analyzer config")

    def objective_spec(self) -> Objective:
        return Objective(self.objective, self.budget_ms, self.min_throughput)
