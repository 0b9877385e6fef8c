"""The tuning report: JSON (for ``plan`` and machines), Markdown and a throughput/p99 plot.

Every figure is shown with its spread (min-max over perf_analyzer's windows, or over the
interleaved re-measurement rounds), points that did not settle are marked as such and never
shown as 0 infer/s, and a claim of improvement appears only when the re-measurement supports it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from aitune_triton.atomic import replace_file_atomically
from aitune_triton.tune.points import TRANSPORTS, Measurement
from aitune_triton.tune.result import TuneResult

log = logging.getLogger(__name__)

BACKUP = "config.pbtxt.bak"
REPORT_JSON, REPORT_MD, REPORT_PNG = "tune_report.json", "tune_report.md", "tune_variants.png"


def _num(value: float | None, fmt: str = "%.1f") -> str:
    return "—" if value is None else fmt % value


def _spread(m: Measurement) -> str:
    if m.throughput_low is None or m.throughput_high is None:
        return "—"
    return "%.1f–%.1f (±%.0f %%)" % (m.throughput_low, m.throughput_high, (m.spread_pct() or 0.0) / 2)


def _transports(result: TuneResult) -> bool:
    """Whether the client transport was searched (a column of its own then)."""
    return len(result.space.transports) > 1


def _md_row(m: Measurement, result: TuneResult) -> str:
    v = m.point.variant
    if result.chosen is not None and m.point == result.chosen.point:
        note = "finalist, **chosen**"
    elif any(f.point == m.point for f in result.finalists):
        note = "finalist"
    elif not m.ok:
        note = "%s: %s" % (m.status, m.detail[:80])
    elif not result.objective.feasible(m):
        note = "violates the constraint"
    else:
        note = ""
    transport = " %s |" % m.point.transport if _transports(result) else ""
    return "| %d | %d | %s | %s | %d |%s %s | %s | %s | %s | %s |" % (
        m.index, v.instances, "-" if v.delay_us is None else v.delay_us, list(v.preferred) or "-",
        m.point.concurrency, transport, _num(m.throughput), _spread(m), _num(m.p50_ms, "%.2f"),
        _num(m.p99_ms, "%.2f"), note.replace("|", "/"))


def _finalist_rows(result: TuneResult) -> list[str]:
    rows = ["| config | concurrency | rounds (infer/s) | median infer/s | min–max | median p99 ms | note |",
            "|---|---|---|---|---|---|---|"]
    for f in result.finalists:
        s = f.summary()
        rounds = ", ".join(_num(r.throughput) + ("" if r.ok else " (%s)" % r.status) for r in f.runs)
        if result.chosen is not None and s.point == result.chosen.point:
            note = "**chosen**"
        elif s.point in result.ties:
            note = "within the chosen one's spread"
        elif not s.ok:
            note = s.status
        elif not result.objective.feasible(s):
            note = "violates the constraint"
        else:
            note = "measurably worse"
        if s.point.variant == result.previous:
            note += " (current config)"
        rows.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            s.point.variant.label(), "%d%s" % (s.point.concurrency, "" if s.point.transport == "none"
                                                else " (%s shm)" % s.point.transport),
            rounds, _num(s.throughput), _spread(s), _num(s.p99_ms, "%.2f"), note))
    return rows


def to_markdown(result: TuneResult) -> str:
    counts = result.status_counts
    unsettled = ", ".join("%d %s" % (n, k) for k, n in sorted(counts.items()) if k != "ok")
    lines = ["# Tuning report: %s" % result.model, "",
             "- objective: %s" % result.objective.describe(),
             "- search: %s, %d of %d grid points measured (%.0f %%)%s, %d model loads, %.0f s" % (
                 "brute force" if result.mode == "brute" else "quick (coordinate descent)", result.measured,
                 result.grid_size, 100.0 * result.measured / result.grid_size,
                 "; %s" % unsettled if unsettled else "", result.loads, result.elapsed_s),
             "- finalists: %d configs re-measured interleaved, %d measurements in all; the choice and any "
             "improvement come from these rounds" % (len(result.finalists), result.remeasured),
             "- previous config: %s" % result.previous.label()]
    if result.load_avg:
        lines.append("- machine load (1-min load average) at start / end: %s" % " / ".join(
            "%.2f" % v for v in result.load_avg))
    if result.placement:
        lines.append("- placement: %s" % result.placement["text"])
    c, b = result.chosen, result.baseline
    if c is not None:
        lines.append("- chosen: %s at client concurrency %d: median %s infer/s (%s over %d rounds), "
                     "p50 %s ms, p99 %s ms, measured with client transport %s (the written config does "
                     "not depend on it)" % (c.point.variant.label(), c.point.concurrency, _num(c.throughput),
                                            _spread(c), len(c.windows), _num(c.p50_ms, "%.2f"),
                                            _num(c.p99_ms, "%.2f"), TRANSPORTS[c.point.transport]))
    if result.improvement is not None and b is not None:
        lines.append("- improvement over the current config (same rounds, spreads apart): %.2fx %s "
                     "(current: median %s infer/s, %s)" % (
                         result.improvement, "throughput" if result.objective.kind == "max-throughput"
                         else "lower p99", _num(b.throughput), _spread(b)))
    elif c is not None and b is not None and b.point != c.point:
        lines.append("- no improvement over the current config is claimed: %s" % (
            "it was %s when re-measured" % b.status if not b.ok else "the figures do not support one"))
    if result.ties:
        lines.append("- within the chosen config's spread (equally good here): %s" % "; ".join(
            p.label() for p in result.ties))
    lines.append("- result: %s%s" % (result.reason, "; written to %s (previous kept as %s)" % (
        result.config_path.name, BACKUP) if result.written else ""))
    if result.perf_flags:
        lines.append("- perf_analyzer settings that settled the points: %s" % ", ".join(
            "--%s %s" % kv for kv in result.perf_flags.items()))
    if result.finalists:
        lines += ["", "## Finalists, re-measured interleaved", ""] + _finalist_rows(result)
    lines += ["", "## Search", "",
              "infer/s is the median of perf_analyzer's last windows and the spread their min–max; unstable "
              "points never settled (their windows are shown, they are never chosen); stalled points served "
              "nothing measurable.", "",
              "| # | %s | delay us | preferred | concurrency |%s infer/s | spread | p50 ms | p99 ms | note |" % (
                  "instances per GPU" if result.space.gpus else "instances",
                  " transport |" if _transports(result) else ""),
              "|---|---|---|---|---|%s---|---|---|---|---|" % ("---|" if _transports(result) else "")]
    lines += [_md_row(m, result) for m in sorted(result.measurements, key=lambda m: m.index)]
    lines += ["", "![variants](%s)" % REPORT_PNG, ""]
    return "\n".join(lines)


def _errorbars(ax: Any, points: list[Measurement], **style: Any) -> None:
    """Settled points at (p99, median throughput) with their min-max spread as bars."""
    figures = [m.figures() for m in points]
    ax.errorbar([p99 for _, p99 in figures], [thr for thr, _ in figures],
                yerr=[[thr - m.lo for (thr, _), m in zip(figures, points, strict=True)],
                      [m.hi - thr for (thr, _), m in zip(figures, points, strict=True)]], **style)


def write_plot(result: TuneResult, path: Path) -> Path:
    """Every settled point on throughput vs p99 with its window spread; finalists' medians over
    rounds; the chosen one starred, the constraint drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ok = [m for m in result.measurements if m.ok]
    for inst in sorted({m.point.variant.instances for m in ok}):
        _errorbars(ax, [m for m in ok if m.point.variant.instances == inst], fmt="o", alpha=0.7, capsize=2,
                   label="%d instance(s)" % inst)
    fin = [s for s in (f.summary() for f in result.finalists) if s.ok]
    if fin:
        _errorbars(ax, fin, fmt="s", color="black", mfc="none", capsize=3, label="finalists (median over rounds)")
    if result.chosen is not None and result.chosen.ok:
        c = result.chosen
        throughput, p99 = c.figures()
        ax.scatter([p99], [throughput], marker="*", s=320, facecolors="none", edgecolors="red", linewidths=1.5,
                   label="chosen: %s @ c=%d" % (c.point.variant.label(), c.point.concurrency))
    if result.objective.budget_ms:
        ax.axvline(result.objective.budget_ms, color="grey", linestyle="--", label="p99 budget")
    if result.objective.min_throughput:
        ax.axhline(result.objective.min_throughput, color="grey", linestyle=":", label="min throughput")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (infer/s), bars: min-max")
    ax.set_title("%s: %d of %d grid points measured (%s)" % (result.model, result.measured, result.grid_size,
                                                               result.mode))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_reports(result: TuneResult, report_dir: Path) -> dict[str, Path]:
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": report_dir / REPORT_JSON, "markdown": report_dir / REPORT_MD, "plot": report_dir / REPORT_PNG}
    replace_file_atomically(paths["json"], json.dumps(result.to_dict(), indent=2) + "\n")
    replace_file_atomically(paths["markdown"], to_markdown(result))
    try:
        write_plot(result, paths["plot"])
    except Exception as exc:  # a broken matplotlib must not lose the measurements
        log.warning("could not draw %s: %s", paths["plot"], exc)
        paths.pop("plot")
    return paths
