"""``validate`` against the real embedded Triton 2.51 and a generated repository.

One repository is generated for the module (examples/cnn, ExportedProgram fallback). One server
started by the tests serves a copy of it plus a model whose config declares a wrong output dim;
the url-mode tests attach to that server, so each torch-importing model load happens once.
Two embedded runs launch their own server: the full run with perf, and one killed mid-run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from aitune_triton import procs
from aitune_triton.reference_data import REFERENCE, load_reference, save_reference
from aitune_triton.validate.result import CheckResult, CheckStatus
from aitune_triton.validate.checks.registry import registered
from aitune_triton.validate.options import ValidateOptions
from aitune_triton.validate.harness import validate_repository
from aitune_triton.validate.report import PLOT_PNG, REPORT_JSON, REPORT_MD

PASS, FAIL, SKIP, WARN = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.SKIP, CheckStatus.WARN

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ["load", "ready", "metadata", "accuracy_http", "accuracy_grpc", "edge_shapes", "envelope_bounds",
          "bad_requests", "dynamic_batching", "version_stamp", "perf"]
# perf_analyzer on 2 shared cores: small windows, and stability loose enough that noise from other
# processes cannot stop the sweep (the numbers are not what these tests check)
FAST_PERF = dict(concurrency=(1, 2), perf_request_count=50, perf_stability_pct=1000, perf_max_trials=10)


def tritonservers_of_this_process(repo: Path) -> list[int]:
    """Live tritonserver children of the test process serving ``repo`` (the server runs in its
    own session; the url-mode tests' server serves another copy)."""
    found = []
    flag = ("--model-repository=%s" % repo.resolve()).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1: raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        if comm == "tritonserver" and int(fields[1]) == os.getpid() and fields[0] != "Z":
            try:
                if flag in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def generated(tmp_path_factory, triton_server_factory) -> Path:
    """(The server factory only makes this skip where the Triton stack is missing.)"""
    from aitune_triton.api import generate

    repo = tmp_path_factory.mktemp("validate") / "repo"
    generate(ROOT / "examples" / "cnn" / "model.py", repo,
             overrides={"fallback_format": "export", "backends": ("python",)})
    return repo


@pytest.fixture(scope="module")
def served(generated, triton_server_factory, tmp_path_factory):
    """A test-started server on a copy of the repository plus ``cnn_baddim`` (output dims [12]
    where the model returns 10 values: the Python backend does not check output shapes)."""
    repo = tmp_path_factory.mktemp("served") / "repo"
    shutil.copytree(generated, repo)
    shutil.copytree(repo / "cnn", repo / "cnn_baddim")
    config = repo / "cnn_baddim" / "config.pbtxt"
    text = config.read_text()
    assert 'name: "cnn"' in text and "dims: [ 10 ]" in text
    config.write_text(text.replace('name: "cnn"', 'name: "cnn_baddim"').replace("dims: [ 10 ]", "dims: [ 12 ]"))
    shutil.copytree(repo / "cnn", repo / "cnn_idle")  # never loaded
    (repo / "cnn_idle" / "config.pbtxt").write_text(text.replace('name: "cnn"', 'name: "cnn_idle"'))
    server = triton_server_factory(repo, load_models=("cnn", "cnn_baddim"))
    return server, repo


def statuses(model) -> dict[str, str]:
    return {c.name: c.status for c in model.checks}


def test_embedded_run_passes_and_writes_the_report(generated, tmp_path):
    messages = []
    report_dir = tmp_path / "report"
    report = validate_repository(generated, ValidateOptions(report_dir=report_dir, **FAST_PERF), messages.append)
    cnn = report.model("cnn")
    assert report.exit_code == 0, [(c.name, c.detail) for c in cnn.checks if c.status == FAIL]
    # the last model of an embedded run also gets the oversized-shape request, which crashes 2.51 (a warning)
    assert [c.name for c in cnn.checks] == CHECKS + ["oversized_shape"]
    # the harness runs the registry, in order; the raw_* checks apply to pipeline ensembles only
    assert CHECKS[1:-1] == [c.name for c in registered(final=False) if not c.name.startswith("raw_")]
    assert statuses(cnn) == {**{name: PASS for name in CHECKS}, "version_stamp": SKIP, "envelope_bounds": SKIP,
                             "oversized_shape": WARN}, \
        cnn.checks
    assert report.server.mode == "embedded" and report.server.version == "2.51.0"
    assert report.server.backends == ("python",)
    assert "cnn: dynamic batching" in messages and messages[-1] == "stopping tritonserver"
    assert "cnn: perf_analyzer at concurrency 1" in messages and "cnn: perf_analyzer at concurrency 2" in messages
    batching = cnn.check("dynamic_batching").detail
    assert "64 requests (16 in flight)" in batching and "every response matched its request" in batching
    assert [r.concurrency for r in cnn.perf] == [1, 2] and all(r.throughput > 0 for r in cnn.perf)
    assert sum(cnn.batch_histogram.values()) > 0 and max(cnn.batch_histogram) > 1

    data = json.loads((report_dir / REPORT_JSON).read_text())
    assert data["exit_code"] == 0 and data["models"][0]["name"] == "cnn"
    assert {c["name"]: c["status"] for c in data["models"][0]["checks"]} == statuses(cnn)
    assert len(data["models"][0]["perf"]) == 2
    md = (report_dir / REPORT_MD).read_text()
    assert "result: **PASSED**" in md and "| cnn | accuracy_grpc | ✅ pass |" in md and "| cnn | 2 |" in md
    assert (report_dir / PLOT_PNG).read_bytes()[:4] == b"\x89PNG"
    assert "successfully loaded 'cnn'" in (report_dir / "tritonserver.log").read_text()
    assert not tritonservers_of_this_process(generated)


def test_url_mode_uses_the_running_server(served, generated):
    server, _ = served
    report = validate_repository(generated, ValidateOptions(url="http://" + server.http_url, grpc_url=server.grpc_url,
                                                            models=("cnn",), perf=False))
    cnn = report.model("cnn")
    assert report.exit_code == 0, cnn.checks
    assert "load" not in statuses(cnn) and statuses(cnn)["accuracy_grpc"] == PASS
    assert report.server.mode == "url" and report.server.version == "2.51.0"
    # attached: not stopped or unloaded
    assert server.returncode is None and server.is_live() and server.model_ready("cnn")


def test_tampered_reference_fails_accuracy_naming_the_output(served, generated, tmp_path):
    server, _ = served
    repo = tmp_path / "repo"
    shutil.copytree(generated, repo)
    cases = load_reference(repo / "cnn" / REFERENCE)
    cases[1].outputs["output_0"] = cases[1].outputs["output_0"] + np.float32(0.25)
    save_reference(repo / "cnn" / REFERENCE, cases)
    report = validate_repository(repo, ValidateOptions(url=server.http_url, grpc_url=server.grpc_url, perf=False))
    cnn = report.model("cnn")
    assert report.exit_code == 1
    for name in ("accuracy_http", "accuracy_grpc"):
        detail = cnn.check(name).detail
        assert cnn.check(name).status == FAIL
        assert detail.startswith("output 'output_0', reference case 1 (items 0-3): 40/40 elements outside"), detail
    assert statuses(cnn)["metadata"] == PASS and statuses(cnn)["edge_shapes"] == PASS


def test_wrong_dim_in_the_config_fails_metadata_and_edge_shapes(served):
    server, repo = served
    report = validate_repository(repo, ValidateOptions(url=server.http_url, grpc_url=server.grpc_url,
                                                       models=("cnn_baddim",), perf=False))
    bad = report.model("cnn_baddim")
    assert report.exit_code == 1
    assert bad.check("metadata").status == FAIL
    assert "output 'output_0': dims [10] in manifest.json but [12] in config.pbtxt" in bad.check("metadata").detail
    assert bad.check("edge_shapes").status == FAIL
    assert "output 'output_0' has shape [1, 10] but config.pbtxt declares dims [12]" in bad.check("edge_shapes").detail


def test_server_killed_mid_run_is_reported(generated, tmp_path):
    killed = []

    def progress(message: str) -> None:
        if message == "cnn: edge shapes":
            (pid,) = tritonservers_of_this_process(generated)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    report_dir = tmp_path / "report"
    report = validate_repository(generated, ValidateOptions(perf=True, report_dir=report_dir), progress)
    assert killed, "the run never reached the edge-shape check"
    cnn = report.model("cnn")
    assert report.exit_code == 1
    assert statuses(cnn)["edge_shapes"] == FAIL and "bad_requests" not in statuses(cnn) and "perf" not in statuses(cnn)
    assert cnn.check("server").status == FAIL
    error = report.server.error
    assert error.startswith("tritonserver exited with code -9 during check 'edge_shapes' of cnn; last lines of")
    assert "successfully loaded 'cnn'" in error  # the log tail
    assert "## Server failure" in (report_dir / REPORT_MD).read_text()
    assert not tritonservers_of_this_process(generated) and not procs.group_members(killed[0])


def test_url_mode_model_not_loaded_fails_ready_and_skips_the_rest(served):
    server, repo = served
    report = validate_repository(repo, ValidateOptions(url=server.http_url, grpc_url=server.grpc_url,
                                                       models=("cnn_idle",)))
    idle = report.model("cnn_idle")
    assert report.exit_code == 1
    expected = "model cnn_idle is not ready on the server (state: never loaded; load it on that server first)"
    assert idle.check("ready") == CheckResult("ready", FAIL, expected, idle.check("ready").seconds)
    assert {c.status for c in idle.checks[1:]} == {SKIP} and "perf" not in statuses(idle)
    assert not server.model_ready("cnn_idle")  # url mode never loads
