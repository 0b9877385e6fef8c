"""The CLI end to end as a user runs it: generate, validate, serve, build-plan without TensorRT."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.live
ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "aitune_triton.cli"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model_repository"
    proc = subprocess.run(CLI + ["generate", str(ROOT / "examples" / "multi_io" / "model.py"), "--out", str(out),
                                "--fallback-format", "export"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "multi_io (python, ready)" in proc.stderr
    # the no-TensorRT path says what happened and what to do, in two lines
    assert re.search(r"TensorRT is not installed here: .* staged in .*multi_io/tensorrt", proc.stderr)
    assert "aitune-triton build-plan" in proc.stderr
    # not a terminal: still one line per stage with its duration
    for stage in (r"spec: loading model\.py, recording and probing", r"building the PyTorch fallback",
                  r"exporting ONNX and checking it", r"writing multi_io, multi_io_trt into"):
        assert re.search(r"^%s.* \(\d+\.\d s\)$" % stage, proc.stderr, re.M), (stage, proc.stderr)
    assert "output 'output_1' is served as dims [1] with reshape []" in proc.stderr
    assert "clients receive shape [batch, 1] where eager PyTorch returns [batch]" in proc.stderr
    # the envelope: one line per input, the batch measured on this machine
    assert re.search(r"^features: batch 1\.\.\d+, axis 1: 4 \(batch: measurement\)$", proc.stderr, re.M), proc.stderr
    assert re.search(r"^category: batch 1\.\.\d+ \(batch: measurement\)$", proc.stderr, re.M), proc.stderr
    assert ("input 'category' is served as dims [1] with reshape [] (Triton refuses empty dims): clients send shape "
            "[batch, 1] where eager PyTorch takes [batch]") in proc.stderr
    return out


def test_no_tensorrt_repository_layout(repo):
    home = repo / "multi_io"
    for rel in ("config.pbtxt", "1/model.py", "manifest.json", "reference.npz", "tensorrt/model.onnx",
                "tensorrt/config.pbtxt", "tensorrt/build_plan.sh"):
        assert (home / rel).exists(), rel
    assert not (repo / "multi_io_trt").exists()
    manifest = json.loads((home / "manifest.json").read_text())
    assert manifest["tensorrt"]["status"] == "pending"
    assert 'platform: "tensorrt_plan"' in (home / "tensorrt" / "config.pbtxt").read_text()
    assert subprocess.run(["bash", "-n", str(home / "tensorrt" / "build_plan.sh")]).returncode == 0


def test_build_plan_without_tensorrt_is_a_clear_usage_error(repo):
    proc = subprocess.run(CLI + ["build-plan", str(repo)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "TensorRT is not available here" in proc.stderr
    assert "Traceback" not in proc.stderr and not (repo / "multi_io_trt").exists()


def test_validate_passes_and_skips_the_pending_plan(repo, tmp_path):
    report = repo.parent / "model_repository_validation_report"  # the default: this repository's own
    proc = subprocess.run(CLI + ["validate", str(repo), "--no-perf"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^multi_io: accuracy grpc \(\d+\.\d s\)$", proc.stderr, re.M), proc.stderr
    data = json.loads((report / "report.json").read_text())
    status = {m["name"]: m for m in data["models"]}
    # the last model also gets the oversized-shape request, a warning on Triton 2.51 (it crashes the server)
    assert all(c["status"] in ("pass", "skip") or c["name"] == "oversized_shape" for c in status["multi_io"]["checks"])
    assert any(c["name"] == "accuracy_grpc" and c["status"] == "pass" for c in status["multi_io"]["checks"])
    assert status["multi_io_trt"]["skipped"]
    # the server the oversized-shape check crashes leaves stubs that stop() removes: routine, not console noise
    oversized = next(c for c in status["multi_io"]["checks"] if c["name"] == "oversized_shape")
    assert oversized["status"] == "warn" or "killing processes left" not in proc.stderr
    assert "WARNING aitune_triton" not in proc.stderr, proc.stderr


def test_serve_foreground_and_ctrl_c(repo):
    serve_and_stop(repo)


def test_serve_a_server_outside_the_standard_layout_with_backend_directory(repo, tmp_path):
    """A tritonserver that is not PREFIX/bin/tritonserver (here a wrapper script elsewhere) has no
    backends dir to derive: Triton's default would miss the python backend, --backend-directory names it."""
    from aitune_triton.triton import tools

    wrapper = tmp_path / "opt" / "tritonserver"
    wrapper.parent.mkdir()
    wrapper.write_text('#!/bin/sh\nexec "%s" "$@"\n' % tools.bundled_tritonserver())
    wrapper.chmod(0o755)
    proc = subprocess.run(CLI + ["serve", str(repo), "--tritonserver", str(wrapper), "--http-port", "0", "--grpc-port",
                                 "0", "--metrics-port", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert re.search(r"unable to find backend library for backend 'python'.*; the server looked in its default "
                     r"\(/opt/tritonserver/backends\): pass its backends folder with --backend-directory",
                     " ".join(proc.stdout.split() + proc.stderr.split())), proc.stdout + proc.stderr
    serve_and_stop(repo, "--tritonserver", str(wrapper), "--backend-directory", str(tools.backends_dir()))


def serve_and_stop(repo, *extra: str) -> None:
    """``serve REPO`` until it says Ctrl-C, one request for the model's config, then SIGINT: exit 0."""
    from aitune_triton.triton.launch import free_ports

    http, grpc, metrics = free_ports(3)
    proc = subprocess.Popen(CLI + ["serve", str(repo), "--http-port", str(http), "--grpc-port", str(grpc),
                                   "--metrics-port", str(metrics), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not any("Ctrl-C to stop" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.2)
        assert any("curl" in line for line in lines), "".join(lines)
        with urllib.request.urlopen("http://127.0.0.1:%d/v2/models/multi_io/config" % http, timeout=5) as r:
            served = json.loads(r.read())["max_batch_size"]
        assert served == json.loads((repo / "multi_io" / "manifest.json").read_text())["max_batch_size"] >= 8
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    assert proc.returncode == 0, "".join(lines)
    with pytest.raises(OSError, match="Connection refused"):  # the server is gone with it
        urllib.request.urlopen("http://127.0.0.1:%d/v2/health/live" % http, timeout=2)
