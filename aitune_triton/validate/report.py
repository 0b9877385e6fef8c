"""``ValidationReport``: what ``validate`` found, as JSON (for machines and ``tune``), Markdown
(for a PR or a ticket), a latency/throughput plot, and a rich table for the terminal.

The JSON is the record; the Markdown and the plot are views of it, so ``from_dict`` lets them be
re-rendered from an old ``report.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from aitune_triton.output_paths import resource_error
from aitune_triton.triton.perf import PerfRow
from aitune_triton.atomic import replace_file_atomically
from aitune_triton.validate.result import CheckResult, CheckStatus

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOT_PNG = "latency_throughput.png"


@dataclass(frozen=True)
class ServerInfo:
    """Which server answered. ``error`` holds why it failed to start or died, with its log tail."""

    mode: str
    http_url: str | None = None
    grpc_url: str | None = None
    version: str | None = None
    binary: str | None = None
    backends: tuple[str, ...] | None = None
    log_path: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {"mode": self.mode, "http_url": self.http_url, "grpc_url": self.grpc_url, "version": self.version,
                "binary": self.binary, "backends": list(self.backends) if self.backends is not None else None,
                "log_path": self.log_path, "error": self.error}

    @classmethod
    def from_dict(cls, d: dict) -> "ServerInfo":
        backends = d.get("backends")
        return cls(d["mode"], d.get("http_url"), d.get("grpc_url"), d.get("version"), d.get("binary"),
                   tuple(backends) if backends is not None else None, d.get("log_path"), d.get("error"))


@dataclass(frozen=True)
class ModelReport:
    """One model: its checks, perf points and executed batch sizes; ``skipped`` says why it was not run."""

    name: str
    backend: str
    checks: tuple[CheckResult, ...] = ()
    perf: tuple[PerfRow, ...] = ()
    perf_unstable: tuple[int, ...] = ()
    batch_histogram: dict[int, int] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def status(self) -> str:
        if any(c.status == CheckStatus.FAIL for c in self.checks):
            return "failed"
        return "skipped" if self.skipped else "passed"

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict:
        return {"name": self.name, "backend": self.backend, "status": self.status, "skipped": self.skipped,
                "checks": [c.to_dict() for c in self.checks],
                "perf": [dataclasses.asdict(row) for row in self.perf], "perf_unstable": list(self.perf_unstable),
                "batch_histogram": {str(k): v for k, v in sorted(self.batch_histogram.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelReport":
        return cls(d["name"], d["backend"], tuple(CheckResult.from_dict(c) for c in d.get("checks", [])),
                   tuple(PerfRow(**row) for row in d.get("perf", [])), tuple(d.get("perf_unstable", [])),
                   {int(k): int(v) for k, v in d.get("batch_histogram", {}).items()}, d.get("skipped"))


@dataclass(frozen=True)
class ValidationReport:
    repository: str
    server: ServerInfo
    models: tuple[ModelReport, ...]
    started: str = ""
    seconds: float = 0.0
    options: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def counts(self) -> dict[CheckStatus, int]:
        """Checks per status; a model skipped as a whole counts as one skip."""
        counts = {CheckStatus.PASS: 0, CheckStatus.FAIL: 0, CheckStatus.SKIP: 0}
        for model in self.models:
            if model.skipped and not model.checks:
                counts[CheckStatus.SKIP] += 1
            for c in model.checks:
                counts[c.status] = counts.get(c.status, 0) + 1
        return counts

    @property
    def passed(self) -> bool:
        """No check failed and at least one passed: a run that checked nothing proves nothing."""
        counts = self.counts
        return self.server.error is None and counts[CheckStatus.FAIL] == 0 and counts[CheckStatus.PASS] > 0

    @property
    def verdict(self) -> str:
        if self.passed:
            return "PASSED"
        counts = self.counts
        return "NOT VALIDATED" if self.server.error is None and counts[CheckStatus.FAIL] == 0 else "FAILED"

    @property
    def exit_code(self) -> int:
        """0 when every check passed (skips allowed, but at least one check passed), 1 otherwise."""
        return 0 if self.passed else 1

    def model(self, name: str) -> ModelReport:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"schema_version": self.schema_version, "repository": self.repository, "started": self.started,
                "seconds": round(self.seconds, 2), "passed": self.passed, "exit_code": self.exit_code,
                "counts": {k.value: v for k, v in self.counts.items()}, "options": self.options,
                "server": self.server.to_dict(),
                "models": [m.to_dict() for m in self.models]}

    @classmethod
    def from_dict(cls, d: dict) -> "ValidationReport":
        return cls(d["repository"], ServerInfo.from_dict(d["server"]),
                   tuple(ModelReport.from_dict(m) for m in d.get("models", [])), d.get("started", ""),
                   float(d.get("seconds", 0.0)), d.get("options", {}), int(d.get("schema_version", SCHEMA_VERSION)))

    def write(self, report_dir: Path) -> dict[str, Path]:
        """report.json, report.md and (when perf ran) latency_throughput.png; returns their paths.

        Each file is written whole or not at all (a temp file renamed into place): a full disk
        leaves the previous report, never a truncated one, and is one UserError line."""
        report_dir = Path(report_dir)
        paths = {"json": report_dir / REPORT_JSON, "md": report_dir / REPORT_MD}
        plot = report_dir / PLOT_PNG
        try:
            report_dir.mkdir(parents=True, exist_ok=True)
            replace_file_atomically(paths["json"], json.dumps(self.to_dict(), indent=2) + "\n")
            if any(m.perf for m in self.models):
                tmp = report_dir / (".tmp-" + PLOT_PNG)
                try:
                    write_plot(self, tmp)
                    tmp.replace(plot)
                finally:
                    tmp.unlink(missing_ok=True)
                paths["png"] = plot
            replace_file_atomically(paths["md"], to_markdown(self, plot.name if "png" in paths else None))
        except OSError as exc:
            raise resource_error(exc, "the validation report", report_dir) from None
        return paths


def _cell(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ICON = {CheckStatus.PASS: "✅ pass", CheckStatus.FAIL: "❌ fail", CheckStatus.SKIP: "⏭ skip"}


def to_markdown(report: ValidationReport, plot_name: str | None = None) -> str:
    counts = report.counts
    s = report.server
    lines = [
        "# Triton validation report", "",
        "- repository: `%s`" % report.repository,
        "- server: %s, Triton %s (http %s, grpc %s)" % (s.mode, s.version or "unknown", s.http_url, s.grpc_url),
        "- result: **%s** — %d passed, %d failed, %d skipped checks in %.0f s"
        % (report.verdict, counts[CheckStatus.PASS], counts[CheckStatus.FAIL],
           counts[CheckStatus.SKIP], report.seconds),
    ]
    if s.log_path:
        lines.append("- server log: `%s`" % s.log_path)
    if s.error:
        lines += ["", "## Server failure", "", "```", s.error.strip(), "```"]
    lines += ["", "## Checks", "", "| model | check | status | seconds | detail |", "|---|---|---|---|---|"]
    for m in report.models:
        if m.skipped and not m.checks:
            lines.append("| %s | — | %s | | %s |" % (m.name, _ICON[CheckStatus.SKIP], _cell(m.skipped)))
        for c in m.checks:
            lines.append("| %s | %s | %s | %.2f | %s |" % (m.name, c.name, _ICON.get(c.status, c.status), c.seconds,
                                                            _cell(c.detail)))
    perf = [(m, r) for m in report.models for r in m.perf]
    lines += ["", "## Performance (perf_analyzer, batch-1 requests)", ""]
    if perf:
        lines += ["| model | concurrency | infer/s | p50 ms | p90 ms | p95 ms | p99 ms | queue µs | compute infer µs |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for m, r in perf:
            lines.append("| %s | %d | %.1f | %.2f | %.2f | %.2f | %.2f | %.0f | %.0f |"
                         % (m.name, r.concurrency, r.throughput, r.p50_ms, r.p90_ms, r.p95_ms, r.p99_ms, r.queue_us,
                            r.compute_infer_us))
        for m in report.models:
            if m.perf_unstable:
                lines.append("\n%s: perf_analyzer could not stabilise at concurrency %s."
                             % (m.name, ", ".join(map(str, m.perf_unstable))))
        if plot_name:
            lines += ["", "![throughput vs p99 latency](%s)" % plot_name]
    else:
        lines.append("No measurements (perf disabled, or no model could be measured).")
    hists = [m for m in report.models if m.batch_histogram]
    if hists:
        lines += ["", "## Executed batch sizes (server statistics, whole run)", "",
                  "| model | batch size: executions |", "|---|---|"]
        for m in hists:
            lines.append("| %s | %s |" % (m.name, ", ".join("%d: %d" % kv for kv in sorted(m.batch_histogram.items()))))
    return "\n".join(lines) + "\n"


def write_plot(report: ValidationReport, path: Path) -> Path:
    """Throughput against p99 latency, one line per model through its concurrency points."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        for m in report.models:
            rows = sorted(m.perf, key=lambda r: r.concurrency)
            if not rows:
                continue
            ax.plot([r.p99_ms for r in rows], [r.throughput for r in rows], marker="o", label=m.name)
            for r in rows:
                ax.annotate("c=%d" % r.concurrency, (r.p99_ms, r.throughput), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        ax.set_xlabel("p99 latency (ms)")
        ax.set_ylabel("throughput (infer/s)")
        ax.set_title("Throughput vs p99 latency over concurrency")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)


_STYLE = {CheckStatus.PASS: "green", CheckStatus.FAIL: "bold red", CheckStatus.SKIP: "yellow"}


def print_summary(report: ValidationReport, console=None, report_dir: Path | None = None) -> None:
    """Checks per model (first line of each detail), the perf points, and the verdict."""
    from aitune_triton.console import make_console
    from rich.table import Table
    from rich.text import Text

    console = console or make_console()
    # the repository path and the model names are the user's: plain text, never markup
    table = Table(title=Text("Validation of %s" % report.repository), show_lines=False)
    for col in ("model", "check", "status", "s", "detail"):
        table.add_column(col, overflow="fold", no_wrap=col != "detail")
    for m in report.models:
        if m.skipped and not m.checks:
            table.add_row(Text(m.name), "—", Text(CheckStatus.SKIP.value, style=_STYLE[CheckStatus.SKIP]), "",
                          Text(m.skipped))
        for c in m.checks:
            first = (c.detail.splitlines() or [""])[0]
            table.add_row(Text(m.name), c.name, Text(c.status.value, style=_STYLE.get(c.status, "")),
                          "%.1f" % c.seconds, Text(first[:240]))
    console.print(table)
    perf = [(m, r) for m in report.models for r in m.perf]
    if perf:
        pt = Table(title="perf_analyzer (gRPC, batch-1 requests)")
        for col in ("model", "concurrency", "infer/s", "p50 ms", "p99 ms", "queue µs", "infer µs"):
            pt.add_column(col, justify="left" if col == "model" else "right")
        for m, r in perf:
            pt.add_row(Text(m.name), str(r.concurrency), "%.1f" % r.throughput, "%.2f" % r.p50_ms, "%.2f" % r.p99_ms,
                       "%.0f" % r.queue_us, "%.0f" % r.compute_infer_us)
        console.print(pt)
    if report.server.error:
        console.print(Text("server: " + report.server.error, style="red"))
    counts = report.counts
    verdict = Text(report.verdict, style="bold green" if report.passed else "bold red")
    console.print(Text.assemble(verdict, " — %d passed, %d failed, %d skipped checks (Triton %s, %s)"
                                % (counts[CheckStatus.PASS], counts[CheckStatus.FAIL], counts[CheckStatus.SKIP],
                                   report.server.version or "unknown", report.server.mode)))
    if report_dir is not None:
        for name in (REPORT_JSON, REPORT_MD, PLOT_PNG, "tritonserver.log"):
            if (Path(report_dir) / name).exists():
                console.print("wrote %s" % (Path(report_dir) / name), highlight=False)
