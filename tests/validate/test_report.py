"""ValidationReport: exit semantics, JSON round trip, Markdown, plot and the terminal summary."""

from __future__ import annotations

import json

from rich.console import Console

from aitune_triton.triton.perf import PerfRow
from aitune_triton.validate.result import CheckResult, CheckStatus
from aitune_triton.validate.report import (
    PLOT_PNG,
    REPORT_JSON,
    REPORT_MD,
    ModelReport,
    ServerInfo,
    ValidationReport,
    print_summary,
    to_markdown,
)

PASS, FAIL, SKIP = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.SKIP


def row(c: int, tput: float, p99: float) -> PerfRow:
    return PerfRow(concurrency=c, throughput=tput, p50_ms=p99 / 2, p90_ms=p99 * 0.8, p95_ms=p99 * 0.9, p99_ms=p99,
                   avg_latency_ms=p99 / 2, queue_us=500.0, compute_input_us=20.0, compute_infer_us=900.0,
                   compute_output_us=10.0, client_send_us=5.0, client_recv_us=5.0)


SERVER = ServerInfo("embedded", "127.0.0.1:1", "127.0.0.1:2", "2.51.0", "/bin/tritonserver", ("python",), "/tmp/t.log")


def report(*models: ModelReport, server: ServerInfo = SERVER) -> ValidationReport:
    return ValidationReport("/repo", server, tuple(models), "2026-01-01T00:00:00+00:00", 12.5, {"perf": True})


def passing(name: str = "cnn", perf: bool = True) -> ModelReport:
    checks = (CheckResult("ready", PASS, "ready", 0.01), CheckResult("accuracy_http", PASS, "max |diff| 0", 0.5),
              CheckResult("version_stamp", SKIP, "not a TensorRT plan", 0.0))
    rows = (row(1, 500.0, 2.0), row(2, 800.0, 3.0), row(4, 900.0, 6.5)) if perf else ()
    return ModelReport(name, "python", checks, rows, (8,) if perf else (), {1: 30, 8: 4})


def test_exit_code_semantics():
    assert report(passing()).exit_code == 0
    skipped = ModelReport("cnn_trt", "tensorrt", skipped="TensorRT plan pending: no TensorRT here")
    only_skips = report(passing(), skipped)
    assert only_skips.exit_code == 0 and skipped.status == "skipped"  # skips beside passed checks
    failed = ModelReport("bad", "python", (CheckResult("accuracy_grpc", FAIL, "output 'y' off"),))
    assert report(passing(), failed).exit_code == 1 and failed.status == "failed"
    died = ServerInfo(**{**SERVER.__dict__, "error": "tritonserver exited with code -9"})
    assert report(passing(), server=died).exit_code == 1
    assert report(passing(), failed).counts == {PASS: 2, FAIL: 1, SKIP: 1}


def test_a_run_that_checked_nothing_is_not_passed():
    """Zero passed checks is never PASSED (a model the server could not load used to count as a
    skip and the run printed PASSED — 0 passed, 0 failed, 1 skipped)."""
    nothing = report(ModelReport("m", "onnxruntime", skipped="the server has no 'onnxruntime' backend"))
    assert nothing.counts == {PASS: 0, FAIL: 0, SKIP: 1}
    assert not nothing.passed and nothing.exit_code == 1 and nothing.verdict == "NOT VALIDATED"
    assert "**NOT VALIDATED** — 0 passed, 0 failed, 1 skipped" in to_markdown(nothing)
    assert report(passing()).verdict == "PASSED"
    assert report(ModelReport("m", "python", (CheckResult("load", FAIL, "no backend"),))).verdict == "FAILED"


def test_a_full_disk_leaves_the_previous_report_and_is_one_line(tmp_path, remount):
    import pytest

    from aitune_triton.errors import UserError

    folder = remount(tmp_path / "full", "full")  # a 64 KiB filesystem
    report(passing(perf=False)).write(folder)
    before = (folder / REPORT_JSON).read_text()
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError:
            pass
    big = report(*(passing("m%d" % i, perf=False) for i in range(40)))
    with pytest.raises(UserError, match=r"cannot write the validation report to .*full: no space left on the device"):
        big.write(folder)
    assert (folder / REPORT_JSON).read_text() == before  # whole, not truncated
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp")]


def test_json_round_trip(tmp_path):
    original = report(passing(), ModelReport("cnn_trt", "tensorrt", skipped="pending"))
    paths = original.write(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["schema_version"] == 1 and data["exit_code"] == 0 and data["passed"] is True
    assert data["server"]["version"] == "2.51.0" and data["server"]["backends"] == ["python"]
    cnn = data["models"][0]
    assert cnn["status"] == "passed" and [c["name"] for c in cnn["checks"]] == ["ready", "accuracy_http",
                                                                                "version_stamp"]
    assert cnn["perf"][2]["throughput"] == 900.0 and cnn["batch_histogram"] == {"1": 30, "8": 4}
    assert data["models"][1] == {"name": "cnn_trt", "backend": "tensorrt", "status": "skipped", "skipped": "pending",
                                 "checks": [], "perf": [], "perf_unstable": [], "batch_histogram": {}}
    assert ValidationReport.from_dict(data) == original
    # statuses are str Enums in memory and plain strings on disk, as before
    assert data["counts"] == {"pass": 2, "fail": 0, "skip": 2}
    assert [c["status"] for c in cnn["checks"]] == ["pass", "pass", "skip"]
    assert '"status": "pass"' in paths["json"].read_text()
    assert ValidationReport.from_dict(data).models[0].checks[0].status is CheckStatus.PASS


def test_warn_status_is_shown_as_its_value():
    warned = ModelReport("cnn", "python", (CheckResult("oversized_shape", "warn", "crashed 2.51", 0.1),))
    assert warned.checks[0].status is CheckStatus.WARN and "%s" % CheckStatus.WARN == "warn"
    assert "| cnn | oversized_shape | warn | 0.10 | crashed 2.51 |" in to_markdown(report(warned))


def test_files_markdown_and_plot(tmp_path):
    failed = ModelReport("other", "python", (CheckResult("edge_shapes", FAIL, "batch 8 | failed:\nsecond line", 1.0),),
                         (row(1, 300.0, 4.0),))
    paths = report(passing(), failed).write(tmp_path)
    assert set(paths) == {"json", "md", "png"}
    assert paths["png"] == tmp_path / PLOT_PNG and paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / REPORT_MD).read_text()
    assert "result: **FAILED** — 2 passed, 1 failed, 1 skipped checks" in md
    assert "| cnn | accuracy_http | ✅ pass | 0.50 | max \\|diff\\| 0 |" in md
    assert "| other | edge_shapes | ❌ fail | 1.00 | batch 8 \\| failed: second line |" in md
    assert "| cnn | 4 | 900.0 | 3.25 | 5.20 | 5.85 | 6.50 | 500 | 900 |" in md
    assert "cnn: perf_analyzer could not stabilise at concurrency 8." in md
    assert "| cnn | 1: 30, 8: 4 |" in md
    assert "![throughput vs p99 latency](%s)" % PLOT_PNG in md
    assert (tmp_path / REPORT_JSON).exists()


def test_no_plot_without_measurements(tmp_path):
    paths = report(passing(perf=False)).write(tmp_path)
    assert set(paths) == {"json", "md"} and not (tmp_path / PLOT_PNG).exists()
    assert "No measurements" in paths["md"].read_text()


def test_markdown_shows_server_failure():
    died = ServerInfo(**{**SERVER.__dict__, "error": "tritonserver exited with code -9 during check 'edge_shapes'\n"
                                                     "I0101 last log line"})
    md = to_markdown(report(passing(), server=died))
    assert "## Server failure" in md and "I0101 last log line" in md and "**FAILED**" in md


def test_print_summary_prints_paths_and_names_as_they_are():
    """The repository path and model names are the user's; ``[/x]`` in them was parsed as markup."""
    rep = ValidationReport("/data/[/x]/repo", SERVER, (passing("m[/y]"),), "2026-01-01T00:00:00+00:00", 1.0, {})
    console = Console(record=True, width=200)
    print_summary(rep, console)
    text = console.export_text()
    assert "Validation of /data/[/x]/repo" in text and "m[/y]" in text


def test_print_summary(tmp_path):
    rep = report(passing(), ModelReport("cnn_trt", "tensorrt", skipped="TensorRT plan pending"))
    rep.write(tmp_path)
    console = Console(record=True, width=200)
    print_summary(rep, console, report_dir=tmp_path)
    text = console.export_text()
    assert "accuracy_http" in text and "TensorRT plan pending" in text and "900.0" in text
    assert "PASSED — 2 passed, 0 failed, 2 skipped checks (Triton 2.51.0, embedded)" in text
    assert "wrote %s" % (tmp_path / REPORT_JSON) in text
