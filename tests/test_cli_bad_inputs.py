"""The bad-input corpus: every case exits 2 (1 for a model failure) with one actionable line,
no traceback, and the repository byte-for-byte unchanged."""
import hashlib
import signal
import subprocess
import sys
import time
import re
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from aitune_triton.cli import main

CORPUS = Path(__file__).parent / "corpus"
GOOD = Path(__file__).resolve().parents[1] / "examples" / "cnn" / "model.py"

CASES = [
    # (case id, model file, extra options, exit code, message pattern)
    ("missing_file", "does_not_exist.py", [], 2, "file not found"),
    ("not_python", "not_python.txt", [], 2, "not a Python file"),
    ("syntax_error", "syntax_error.py", [], 2, "syntax error at line 1"),
    ("import_error", "import_error.py", [], 2, "import failed at line 2: ModuleNotFoundError"),
    ("missing_get_model", "missing_get_model.py", [], 2, "no get_model"),
    ("missing_get_samples", "missing_get_samples.py", [], 2, "no get_samples"),
    ("model_not_module", "model_not_module.py", [], 2, "not a torch.nn.Module"),
    ("get_model_raises", "get_model_raises.py", [], 2, "get_model\\(\\) raised at line .*weights missing"),
    ("empty_samples", "empty_samples.py", [], 2, "no samples"),
    ("samples_not_iterable", "samples_not_iterable.py", [], 2, "return a list"),
    ("samples_generator_raises", "samples_generator_raises.py", [], 2,
     "get_samples\\(\\) raised at line 8: ValueError: no more samples"),
    ("sample_not_tensor", "sample_not_tensor.py", [], 2, "not a tensor"),
    ("ragged_structure", "ragged_structure.py", [], 2, "same arguments"),
    ("inconsistent_rank", "inconsistent_rank.py", [], 2, "forward\\(\\) raised|ranks and dtypes"),
    ("unsupported_dtype", "unsupported_dtype.py", [], 2, "unsupported dtype"),
    ("forward_raises", "forward_raises.py", [], 2, "forward\\(\\) raised on sample 0 in forward at line .*boom"),
    # the message is printed as it is, never as rich markup (a closing tag crashed the CLI, a tag vanished)
    ("forward_raises_brackets", "forward_raises_brackets.py", [], 2,
     "RuntimeError: expected \\[batch, seq\\]; see \\[/docs\\]$"),
    ("non_tensor_output", "non_tensor_output.py", [], 2, "must return tensors"),
    ("nan_outputs", "nan_outputs.py", [], 1, "NaN or Inf"),
    ("profile_min_gt_max", "profile_min_gt_max.py", [], 2, "min <= opt <= max"),
    ("profile_unknown_input", "profile_unknown_input.py", [], 2, "'nope', which the model does not have"),
    ("config_bad_value", "config_bad_value.py", [], 2, "max_batch_size must be a positive integer"),
    ("config_wrong_type", "config_wrong_type.py", [], 2, "get_config\\(\\) returned a str"),
    ("samples_used_one_sample", "samples_used_one_sample.py", [], 2, "SAMPLES_USED needs more than one sample"),
    ("max_batch_zero", "good_model.py", ["--max-batch-size", "0"], 2, "max_batch_size must be a positive"),
    ("max_batch_negative", "good_model.py", ["--max-batch-size", "-3"], 2, "max_batch_size must be a positive"),
    ("name_traversal", "good_model.py", ["--name", "../x"], 2, "not a plain directory name"),
    ("name_separator", "good_model.py", ["--name", "a/b"], 2, "not a plain directory name"),
    ("name_hidden", "good_model.py", ["--name", ".hidden"], 2, "not a plain directory name"),
    ("name_empty", "good_model.py", ["--name", ""], 2, "model name is empty"),
    ("name_too_long", "good_model.py", ["--name", "x" * 300], 2, "is not allowed"),
    ("name_newline", "good_model.py", ["--name", "a\nb"], 2, "is not allowed"),
    ("name_trailing_newline", "good_model.py", ["--name", "ok\n"], 2, "is not allowed"),
    ("instances_zero", "good_model.py", ["--instances", "0"], 2, "instances must be 1..64"),
    ("budget_negative", "good_model.py", ["--budget-ms", "-1"], 2, "budget_ms \\(--budget-ms\\) must be a finite "
     "number of milliseconds > 0, got -1.0"),
    ("budget_zero", "good_model.py", ["--budget-ms", "0"], 2, "budget_ms \\(--budget-ms\\) must be a finite"),
    ("quantization_without_tensorrt", "quantization_without_tensorrt.py", [], 2,
     "quantization_config \\(ONNXQuantizationConfig\\) applies to the TensorRT backend only"),
    ("quantization_bad_method", "quantization_bad_method.py", [], 2,
     "ONNXQuantizationConfig\\(precision='fp8'\\) cannot use calibration_method='awq_clip'; use max or entropy"),
    ("quantization_and_precision", "quantization_int8.py", ["--precision", "fp16"], 2,
     "precision='fp16' and quantization_config=ONNXQuantizationConfig both choose the precision"),
    # model.py that exits or hangs: one line naming the step, never a silent exit 0
    ("sys_exit_0_at_import", "exit_at_import.py", [], 2, "model.py called sys.exit\\(0\\) while importing"),
    ("sys_exit_3_in_samples", "exit3_in_samples.py", [], 2, "model.py called sys.exit\\(3\\) in get_samples\\(\\)"),
    ("os_exit_0_at_import", "os_exit_at_import.py", [], 2, "model.py called os._exit\\(0\\) while importing"),
    ("loops_in_samples", "loops_in_samples.py", ["--model-py-timeout", "1"], 2,
     "get_samples\\(\\) did not finish within 1 s \\(at line 5\\); .*--model-py-timeout"),
    ("sleeps_at_import", "sleeps_at_import.py", ["--model-py-timeout", "1"], 2,
     "importing did not finish within 1 s \\(at line 2\\)"),
]


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "existing" / "1").mkdir(parents=True)
    (repo / "existing" / "config.pbtxt").write_text('name: "existing"\n')
    return repo


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.mark.parametrize("case, model, options, code, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input(repo, case, model, options, code, pattern):
    before = _digest(repo.parent)
    path = GOOD if model == "good_model.py" else CORPUS / model
    result = _run(["generate", str(path), "--out", str(repo), *options])
    output = result.output.strip()
    assert result.exit_code == code, output
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    assert re.search(pattern, output), output
    assert _digest(repo.parent) == before


def test_resource_faults_are_one_line_naming_the_resource(monkeypatch, tmp_path):
    """ENOSPC, EROFS or EMFILE anywhere a command writes is one line, not `internal error: OSError`."""
    import errno

    from aitune_triton.deploy import capacity

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "plan.json"))

    monkeypatch.setattr(capacity, "read_curve", full)
    result = _run(["plan", str(tmp_path), "--model", "cnn", "--target-rps", "10", "--p99-ms", "50", "--report",
                   str(Path(__file__).parent / "deploy" / "data" / "validate_report.json")])
    assert result.exit_code == 1 and "internal error" not in result.output, result.output
    assert re.search(r"cannot write a file to .*plan.json: no space left on the device", result.output), result.output


def test_output_dir_is_a_file(tmp_path):
    target = tmp_path / "repo"
    target.write_text("x")
    result = _run(["generate", str(GOOD), "--out", str(target)])
    assert result.exit_code == 2 and "is a file" in result.output and target.read_text() == "x"


VALIDATE_REPORT = Path(__file__).parent / "deploy" / "data" / "validate_report.json"
UNDER_A_FILE = [  # (case id, command line with {out} for a path whose parent is a file)
    ("validate_report", ["validate", "{repo}", "--report", "{out}"]),
    ("tune_report", ["tune", "{repo}", "--model", "existing", "--report", "{out}"]),
    ("tune_model_analyzer", ["tune", "{repo}", "--model", "existing", "--export-model-analyzer", "{out}"]),
    ("plan_out", ["plan", "{repo}", "--model", "cnn", "--target-rps", "10", "--p99-ms", "100",
                  "--report", str(VALIDATE_REPORT), "--out", "{out}"]),
    # deploy k8s --out: tests/deploy/test_k8s.py::test_deploy_cli_unwritable_out_is_one_line
]


@pytest.mark.parametrize("args", [c[1] for c in UNDER_A_FILE], ids=[c[0] for c in UNDER_A_FILE])
def test_output_path_under_a_file_is_one_line_before_any_server(repo, tmp_path, args):
    """An output path that cannot be created (its parent is a file) is refused up front, naming the
    path, not as "internal error: NotADirectoryError" after a server has run."""
    (tmp_path / "blocker").write_text("x")
    out = tmp_path / "blocker" / "x"
    before = _digest(tmp_path)
    result = _run([a.format(repo=repo, out=out) for a in args])
    output = result.output.strip()
    assert result.exit_code == 2, output
    assert "Traceback" not in output and "internal error" not in output and "tritonserver" not in output
    assert len(output.splitlines()) == 1, output
    expected = r"^error: cannot write .* to %s: .*blocker is not a directory" % re.escape(str(out))
    assert re.search(expected, output), output
    assert _digest(tmp_path) == before


def test_validate_report_under_dev_null(repo):
    result = _run(["validate", str(repo), "--report", "/dev/null/x"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("error: cannot write the validation report to /dev/null/x: /dev/null is not a "
                                     "directory; pass a directory that can be created or written")


def test_existing_model_without_force(repo):
    before = _digest(repo.parent)
    result = _run(["generate", str(GOOD), "--out", str(repo), "--name", "existing"])
    assert result.exit_code == 2 and "--force" in result.output
    assert _digest(repo.parent) == before


def test_debug_shows_traceback(repo):
    result = _run(["--debug", "generate", str(CORPUS / "forward_raises.py"), "--out", str(repo)])
    assert result.exit_code == 2 and "Traceback" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    result = _run(["generate", str(GOOD), "--out", str(ro / "repo")])
    assert result.exit_code == 2 and "not writable" in result.output


@pytest.mark.parametrize("sig, delay", [(signal.SIGINT, 3.0), (signal.SIGKILL, 3.0), (signal.SIGKILL, 8.0)])
def test_generate_killed_midway_leaves_repository_as_it_was(repo, sig, delay):
    """Killed while exporting / compiling / writing: the repository is byte-for-byte unchanged and
    no staging dir is left inside it; a later run succeeds."""
    before = _digest(repo)
    proc = subprocess.Popen([sys.executable, "-m", "aitune_triton.cli", "generate", str(GOOD), "--out", str(repo)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    # after a SIGKILL the staging watchdog cleans up: allow it a bounded moment
    deadline = time.monotonic() + 15
    while [p for p in repo.iterdir() if p.name.startswith(".")] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]
    assert _digest(repo) == before
    result = _run(["generate", str(GOOD), "--out", str(repo), "--fallback-format", "export"])
    assert result.exit_code == 0, result.output
    assert (repo / "cnn" / "config.pbtxt").exists() and (repo / "existing" / "config.pbtxt").exists()


def test_validate_under_a_low_open_file_limit_is_one_line_before_any_server(tmp_path):
    import resource
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(Path(__file__).resolve().parents[1] / "model_repository", repo)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "aitune_triton.cli", "validate", str(repo), "--no-perf", "--report",
                           str(tmp_path / "report")], capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard)))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert "the open-file limit is 64 (ulimit -n), below the 256" in out
    assert time.monotonic() - t0 < 120 and "tritonserver.log" not in out
