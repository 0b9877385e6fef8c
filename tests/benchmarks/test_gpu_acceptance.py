"""The GPU acceptance lane's bookkeeping, on the CPU: which model's rates the table shows, and the checks."""

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_lane():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", ROOT / "benchmarks" / "gpu_acceptance.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_manifest(repo: Path, name: str, **fields) -> None:
    (repo / name).mkdir(parents=True)
    (repo / name / "manifest.json").write_text(json.dumps(fields))


def test_a_pipeline_row_shows_the_model_and_its_ensemble(tmp_path):
    lane = load_lane()
    repo = tmp_path / "repo"
    artifact = {"format": "export", "device": "cuda", "skipped": [["aoti", "crashed"]]}
    write_manifest(repo, "text", backend="python", artifact=artifact, max_batch_size=64)
    write_manifest(repo, "text_pre", backend="python", artifact=artifact, max_batch_size=64, pipeline={})
    write_manifest(repo, "text_pipeline", backend="ensemble", max_batch_size=64, pipeline={})
    result = lane.ModelResult("text_pipeline", "examples/text_pipeline/model.py", "fp32", generate_exit=0,
                              generate_s=28.2)
    lane.read_manifests(result, repo)
    assert (result.perf_model, result.pipeline_model, result.format) == ("text", "text_pipeline", "export on cuda")

    def perf(rates):
        return [{"concurrency": c, "throughput": t, "p99_ms": 1.0} for c, t in rates.items()]

    report = {"models": [{"name": "text", "status": "passed", "checks": [], "perf": perf({1: 298.0, 8: 1589.0})},
                         {"name": "text_pre", "status": "passed", "checks": [], "perf": perf({1: 900.0})},
                         {"name": "text_pipeline", "status": "passed", "checks": [],
                          "perf": perf({1: 191.0, 8: 1086.0})}]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    lane.read_report([result], tmp_path / "report.json")
    assert result.infer_per_s == {"1": 298.0, "8": 1589.0}  # not the pre-processing model's 900
    check = lane.CheckResult("serve_outside_layout", "failed", 12.0, "serve did not come up | exit 1")
    doc = {"date": "d", "gpu": "g", "commit": "c", "concurrency": "1,8", "models": [asdict(result)],
           "checks": [asdict(check)]}
    table = lane.table(doc)
    assert "| text_pipeline | fp32 | export on cuda | 28 | passed | 298 (pipeline 191) | 1589 (pipeline 1086) | 64 |" \
        in table
    assert "| serve_outside_layout | failed | 12 | serve did not come up / exit 1 |" in table


def test_the_tritonclient_hiding_folder_hides_it(tmp_path):
    import os
    import subprocess

    lane = load_lane()
    env = dict(os.environ, PYTHONPATH=str(lane.NO_TRITONCLIENT))
    proc = subprocess.run([sys.executable, "-c", "import tritonclient.http"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "hidden by scripts/no_tritonclient" in proc.stderr


def test_a_generate_gets_what_is_left_before_the_time_kept_for_validate():
    import time
    from types import SimpleNamespace

    lane = load_lane()
    args = SimpleNamespace(generate_timeout=420.0)
    timeout, not_run = lane.generate_timeout(args, time.monotonic() + 1000)
    assert (timeout, not_run) == (420.0, "")
    timeout, not_run = lane.generate_timeout(args, time.monotonic() + 100)
    assert 99 < timeout <= 100 and not_run == ""
    _, not_run = lane.generate_timeout(args, time.monotonic() - 5)
    assert not_run == "not run: 0 s left before the time kept for validate"


def test_a_resumed_call_keeps_passed_generates_and_measures_validate_again():
    lane = load_lane()
    passed = lane.ModelResult("cnn", "examples/cnn/model.py", "fp32", generate_exit=0, generate_s=58.0,
                              models=["cnn"], validate="passed", failed_checks=["x"], infer_per_s={"1": 5.0})
    timed_out = lane.ModelResult("vit_bf16", "vit.py", "bf16", generate_exit=None, generate_s=420.0)
    prior = {"models": [asdict(passed), asdict(timed_out)],
             "checks": [asdict(lane.CheckResult("generate_without_tritonclient", "passed", 32.0, "exit 0")),
                        asdict(lane.CheckResult("serve_outside_layout", "passed", 25.0, "ok"))]}
    results = {n: lane.ModelResult(n, "m.py", "fp32") for n in ("cnn", "vit_bf16")}
    checks = {n: lane.CheckResult(n) for n in ("generate_without_tritonclient", "serve_outside_layout")}
    kept = lane.resumed_results(prior, results, checks)
    assert kept == ["cnn", "generate_without_tritonclient"]
    cnn = results["cnn"]
    assert (cnn.generate_s, cnn.models) == (58.0, ["cnn"])
    assert (cnn.validate, cnn.failed_checks, cnn.infer_per_s) == ("not run", [], {})  # measured again
    assert results["vit_bf16"].generate_exit is None and results["vit_bf16"].generate_s is None  # runs again
    assert checks["serve_outside_layout"].status == "not run"  # a server check always runs in the last call


def test_resumed_models_keep_their_perf_model_and_do_not_share_their_measurements():
    lane = load_lane()
    prior = {"models": [asdict(lane.ModelResult(n, "m.py", "fp32", generate_exit=0, models=[n, n + "_trt"],
                                                perf_model=n, infer_per_s={"1": 1.0})) for n in ("cnn", "encoder")]}
    results = {n: lane.ModelResult(n, "m.py", "fp32") for n in ("cnn", "encoder")}
    lane.resumed_results(prior, results, {})
    results["cnn"].infer_per_s["1"] = 700.0
    assert results["encoder"].infer_per_s == {} and results["encoder"].perf_model == "encoder"


def test_generate_only_and_resume_are_two_calls_not_one():
    import pytest

    lane = load_lane()
    with pytest.raises(SystemExit):
        lane.parse_args(["--generate-only", "--resume"])
