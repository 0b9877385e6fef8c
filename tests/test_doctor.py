"""doctor: rows for every component, required vs optional, no crash on broken probes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rich.console import Console

from aitune_triton import doctor
from aitune_triton.doctor import DoctorRow

EXPECTED = {
    "python", "torch", "gpu", "cpu", "numpy", "onnx", "onnxruntime", "tensorrt", "polygraphy", "generate path",
    "modelopt",
    "tritonclient", "tritonserver", "python backend stub", "perf_analyzer",
}
REQUIRED = {"python", "torch", "onnx", "onnxruntime", "tritonclient", "tritonserver", "python backend stub",
            "perf_analyzer"}


def test_collect_covers_every_component():
    rows = doctor.collect()
    assert {r.name for r in rows} == EXPECTED
    assert {r.name for r in rows if r.required} == REQUIRED
    assert all(isinstance(r, DoctorRow) and r.detail for r in rows)
    for row in rows:
        if not row.ok:
            assert row.hint, row


def test_bootstrapped_environment_passes():
    """The project's venv (scripts/bootstrap.sh) has every required component."""
    rows = doctor.collect()
    assert doctor.exit_code(rows) == 0, [r for r in rows if r.required and not r.ok]
    by_name = {r.name: r for r in rows}
    assert "CPU" in by_name["onnxruntime"].detail or "CUDA" in by_name["onnxruntime"].detail
    assert "tritonserver" in by_name["tritonserver"].detail


def test_modelopt_is_located_not_imported():
    code = "from aitune_triton import doctor; doctor.collect(); import sys; print('modelopt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_exit_code():
    ok = DoctorRow("a", True, "x", "", True)
    optional_missing = DoctorRow("b", False, "x", "hint", False)
    required_missing = DoctorRow("c", False, "x", "hint", True)
    assert doctor.exit_code([ok, optional_missing]) == 0
    assert doctor.exit_code([ok, required_missing]) == 1


def test_failing_probe_becomes_a_row(monkeypatch):
    def boom():
        raise ImportError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setattr(doctor, "PROBES", (("tensorrt", False, boom), ("torch", True, boom)))
    rows = doctor.collect()
    assert [(r.name, r.ok, r.required) for r in rows] == [("tensorrt", False, False), ("torch", False, True)]
    assert "libnvinfer" in rows[0].detail
    assert doctor.exit_code(rows) == 1


def test_render():
    console = Console(record=True, width=200)
    rows = [DoctorRow("torch", True, "2.13.0+cpu", "", True),
            DoctorRow("tensorrt", False, "not installed", "pip", False),
            DoctorRow("perf_analyzer", False, "not found", "install it", True)]
    doctor.render(rows, console)
    text = console.export_text()
    for word in ("torch", "2.13.0+cpu", "tensorrt", "optional", "perf_analyzer", "MISSING", "install it"):
        assert word in text


def test_render_prints_details_as_they_are():
    """A detail quoting an exception (``[/x]``, ``[cuda]``) was parsed as markup: a traceback or lost text."""
    console = Console(record=True, width=200)
    doctor.render([DoctorRow("tensorrt", False, "import failed: [/x] needs [cuda]", "pip install [trt]", False)],
                  console)
    text = console.export_text()
    assert "import failed: [/x] needs [cuda]" in text and "pip install [trt]" in text


def test_the_cpu_row_names_the_instruction_set_and_a_remembered_crash(monkeypatch, tmp_path):
    import platform

    from aitune_triton.export import aoti_crashes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    row = doctor._cpu()
    assert row.ok and not row.required and row.detail.startswith("%s, torch CPU capability " % platform.machine())
    assert "crashed" not in row.hint
    aoti_crashes.remember(aoti_crashes.HostKey.here("cpu"), "aoti check crashed (signal SIGSEGV)")
    assert "AOTInductor load crashed here on cpu before" in doctor._cpu().hint


def test_generate_path_says_which_path_generate_takes(tmp_path):
    """The same test generate makes: the fake tensorrt (tests/tensorrt/fake_tensorrt) with and without a GPU."""
    from pathlib import Path

    fake = Path(__file__).resolve().parent / "tensorrt" / "fake_tensorrt"
    root = Path(__file__).resolve().parents[1]
    code = "from aitune_triton import doctor; row = doctor._generate_path(); print(row.ok, row.detail)"
    seen = {}
    for gpu in ("1", "0"):
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "%s:%s" % (root, fake), "FAKE_TENSORRT_GPU": gpu}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        seen[gpu] = proc.stdout.strip()
    assert seen["1"].startswith("True builds the TensorRT plan here and checks it against eager PyTorch (TensorRT "
                                "10.9.0.34 builder and a CUDA GPU available)")
    assert seen["0"].startswith("False stages ONNX + build_plan.sh for a TensorRT/Triton container (TensorRT 10.9.0.34 "
                                "is installed but cannot create a builder here: no usable CUDA GPU?")


@pytest.mark.parametrize("numpy, triton, ok, hint", [
    ("1.26.4", "2.51.0", True, ""),
    ("2.2.6", "2.52.0", True, ""),
    ("2.2.6", "2.51.0", False, "the bundled Triton 2.51.0's Python backend corrupts BYTES tensors under numpy 2"),
    ("2.2.6", None, False, "if the server is older than Triton 2.52"),
    (None, "2.51.0", False, 'pip install "numpy<2"'),
])
def test_the_numpy_row_applies_the_launch_rule(monkeypatch, numpy, triton, ok, hint):
    """The row judges the stub's numpy as validate and serve do before launch: numpy 2 only fails
    under a Triton older than 2.52 (and the server is only asked its release then)."""
    from aitune_triton.triton import launch

    asked = []
    monkeypatch.setattr(launch, "stub_numpy_version", lambda: numpy)
    monkeypatch.setattr(launch, "server_version", lambda path=None: asked.append(path) or triton)
    row = doctor._numpy()
    assert (row.ok, row.detail, row.required) == (ok, numpy or "not installed", False)
    assert hint in row.hint and (ok or 'pip install "numpy<2"' in row.hint)
    assert asked == ([] if numpy is None or numpy.startswith("1") else [None])
