"""``ValidateOptions``: how ``validate`` runs, checked once when built, and the CLI's parsing of
its concurrency list and default report directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aitune_triton import defaults
from aitune_triton.errors import UserError
from aitune_triton.output_paths import check_output_dir


@dataclass(frozen=True)
class ValidateOptions:
    """How to validate. ``url`` (the HTTP endpoint of a running server) and ``tritonserver``
    (another binary to launch instead of the embedded one) exclude each other; ``grpc_url``
    defaults to the HTTP port + 1, Triton's own default pairing."""

    url: str | None = None
    tritonserver: Path | None = None
    backend_directory: Path | None = None  # the launched server's backends (None: derived from tritonserver)
    models: tuple[str, ...] = ()
    perf: bool = True
    concurrency: tuple[int, ...] = defaults.VALIDATE_CONCURRENCY
    shared_memory: str = "none"
    report_dir: Path | None = None
    request_timeout_s: float = defaults.REQUEST_TIMEOUT_S
    startup_timeout_s: float = defaults.STARTUP_TIMEOUT_S
    grpc_url: str | None = None
    perf_request_count: int = defaults.PERF_REQUEST_COUNT
    perf_stability_pct: float = defaults.PERF_STABILITY_PCT
    perf_max_trials: int = 10
    batching_in_flight: int = 16
    # what tritonserver gets as --model-repository when it differs from the local folder the tool
    # reads (an s3:// URL whose manifests were downloaded; see aitune_triton.deploy.storage)
    server_repository: str | None = None

    def __post_init__(self) -> None:
        if self.url and self.tritonserver:
            raise UserError("--url attaches to a running server and --tritonserver launches one; give only one")
        if self.url and self.backend_directory:
            raise UserError("--backend-directory is for a server validate launches; a server at --url has its own")
        if self.shared_memory not in ("none", "system"):
            raise UserError("shared memory must be 'none' or 'system', got %r" % (self.shared_memory,))
        conc = tuple(self.concurrency)
        if not conc or any(not isinstance(c, int) or c < 1 for c in conc):
            raise UserError("concurrency values must be positive integers, got %r" % (self.concurrency,))
        object.__setattr__(self, "concurrency", conc)
        object.__setattr__(self, "models", tuple(self.models))
        for name in ("request_timeout_s", "startup_timeout_s"):
            if not getattr(self, name) > 0:
                raise UserError("%s must be > 0, got %r" % (name, getattr(self, name)))
        if self.report_dir is not None:  # before any server starts, not after the measurements
            check_output_dir(self.report_dir, "the validation report")

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in self.__dict__.items()}


def default_report_dir(repo: Path) -> Path:
    """``<repo>_validation_report`` next to the repository: each repository keeps its own report,
    and nothing is added inside the repository (Triton would see a new entry there)."""
    from aitune_triton.deploy.storage import is_s3_url

    if is_s3_url(repo):  # an s3:// repository: its last path segment, in the current directory
        return Path("%s_validation_report" % str(repo).rstrip("/").rsplit("/", 1)[-1])
    repo = Path(repo).resolve()
    return repo.parent / ("%s_validation_report" % (repo.name or "repository"))


def parse_concurrency(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` or ``"1:8:1"`` (perf_analyzer's range syntax) to a tuple."""
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            lo, hi, step = (parts + [1])[:3] if len(parts) == 2 else parts
            values = tuple(range(lo, hi + 1, step))
        else:
            values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise UserError("concurrency %r is not a comma list (1,2,4) or a range (1:8:1)" % text) from None
    if not values or min(values) < 1:
        raise UserError("concurrency %r gives no positive values" % text)
    return values
