"""The capacity plan: curves read from validate and tune reports, the replica arithmetic, the
stated assumption and the warnings. ``data/validate_report.json`` is a real report: ``validate``
of the committed model_repository on the embedded Triton 2.51 (2 shared CPU cores, 2026-11-30)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from aitune_triton.cli import main
from aitune_triton.deploy import capacity as cap
from aitune_triton.errors import UserError
from aitune_triton.triton.perf import PerfRow
from aitune_triton.validate.report import ModelReport, ServerInfo, ValidationReport

ROOT = Path(__file__).resolve().parents[2]
REAL = Path(__file__).parent / "data" / "validate_report.json"


def _row(concurrency: int, throughput: float, p99: float) -> PerfRow:
    return PerfRow(concurrency, throughput, p99 / 2, p99 * 0.8, p99 * 0.9, p99, p99 / 2, 10.0, 1.0, 100.0, 1.0, 1.0,
                   1.0)


def _validate_report(tmp_path: Path, rows) -> Path:
    report = ValidationReport("/repo", ServerInfo("embedded", version="2.51.0"),
                              (ModelReport("cnn", "python", perf=tuple(rows)),))
    return report.write(tmp_path)["json"]


def test_plan_from_the_real_report():
    curve = cap.read_curve(REAL, "cnn", ROOT / "model_repository" / "cnn")
    assert curve.kind == "validate" and [p.concurrency for p in curve.points] == [4, 8]
    plan = cap.plan(curve, cap.PlanRequest(target_rps=2000, p99_ms=30))
    # only concurrency 8 (p99 26.9 ms) is within 30 ms: 1205.06 x 0.7 = 843.5 usable -> ceil(2.37) = 3
    assert plan.operating_point.concurrency == 8 and plan.replicas == 3
    assert plan.gpus_per_replica == 0 and plan.device == "cpu"
    text = plan.to_text()
    assert "3 replica(s)" in text and "linear scaling per replica" in text and "highest concurrency" in text


def test_replicas_follow_capacity_headroom_and_minimum(tmp_path):
    path = _validate_report(tmp_path, [_row(1, 100, 5), _row(4, 400, 9), _row(8, 500, 40)])
    curve = cap.read_curve(path, "cnn")
    plan = cap.plan(curve, cap.PlanRequest(target_rps=1000, p99_ms=10, headroom=0.3, gpus_per_replica=2))
    assert plan.operating_point.concurrency == 4 and plan.replica_capacity == 400
    assert plan.replicas == 4 and plan.gpus == 8  # ceil(1000 / 280)
    assert not any("highest concurrency" in w for w in plan.warnings)
    assert cap.plan(curve, cap.PlanRequest(target_rps=10, p99_ms=10, min_replicas=2)).replicas == 2
    exact = cap.plan(curve, cap.PlanRequest(target_rps=800, p99_ms=10, headroom=0.0))
    assert exact.replicas == 2
    d = plan.to_dict()
    assert d["capacity_per_gpu_rps"] == 200 and d["assumption"] == cap.ASSUMPTION


def test_a_budget_no_point_meets_is_refused(tmp_path):
    curve = cap.read_curve(_validate_report(tmp_path, [_row(1, 100, 12), _row(2, 150, 20)]), "cnn")
    with pytest.raises(UserError, match="no measured point of cnn meets p99 <= 5.00 ms .* 12.00 ms at concurrency 1"):
        cap.plan(curve, cap.PlanRequest(target_rps=100, p99_ms=5))


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_rps=0, p99_ms=5), "--target-rps must be a finite number > 0"),
    (dict(target_rps=1, p99_ms=-1), "--p99-ms must be a finite number > 0"),
    (dict(target_rps=1, p99_ms=5, headroom=1.0), "--headroom must be in"),
    (dict(target_rps=1, p99_ms=5, gpus_per_replica=-1), r"--gpus-per-replica must be in \[0, 64\]"),
])
def test_bad_requests_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        cap.PlanRequest(**kwargs)


def test_tune_report_uses_the_chosen_variant_and_reports_instance_scaling(tmp_path):
    def m(inst, conc, thr, p99, status="ok"):
        return {"instances": inst, "max_queue_delay_us": 100, "preferred": [], "concurrency": conc,
                "throughput": thr, "p50_ms": p99 / 2, "p95_ms": p99, "p99_ms": p99, "status": status, "detail": "",
                "index": 0}

    data = {"model": "cnn", "objective": {"kind": "max-throughput"}, "mode": "quick",
            "chosen": m(2, 8, 900, 8), "previous": {"instances": 1, "max_queue_delay_us": 100, "preferred": []},
            "measurements": [m(1, 8, 500, 9), m(2, 4, 700, 5), m(2, 8, 900, 8), m(2, 16, 0, 0, "unstable")]}
    path = tmp_path / cap.TUNE_REPORT
    path.write_text(json.dumps(data))
    curve = cap.read_curve(path, "cnn")
    assert curve.kind == "tune" and curve.instances == 2
    assert [(p.concurrency, p.throughput) for p in curve.points] == [(4, 700), (8, 900)]
    assert any("1 -> 2 instances gave 500.0 -> 900.0 infer/s (90 % of linear)" in n for n in curve.notes)
    with pytest.raises(UserError, match="tune report of 'cnn', not 'other'"):
        cap.read_curve(path, "other")


def test_tune_curve_is_the_chosen_variant_over_plain_messages_one_point_per_concurrency(tmp_path):
    """The curve kept every row of the chosen instances and delay: a CUDA shared-memory row (which a
    client behind a Service cannot use) at 300/s planned 5 replicas where plain requests at 100/s
    need 15, and rows of another preferred-batch variant were mixed in."""
    def m(conc, thr, transport="none", preferred=(), inst=2):
        return {"instances": inst, "max_queue_delay_us": 100, "preferred": list(preferred), "concurrency": conc,
                "throughput": thr, "p99_ms": 5.0, "status": "ok", "transport": transport}

    chosen = {**m(4, 300, "cuda"), "preferred": []}
    rows = [m(4, 100), m(4, 300, "cuda"), m(4, 250, "system"), m(4, 400, preferred=(2, 4)), m(8, 120),
            m(8, 90), m(4, 60, inst=1)]
    path = tmp_path / cap.TUNE_REPORT
    path.write_text(json.dumps({"model": "cnn", "objective": {}, "chosen": chosen, "measurements": rows}))
    curve = cap.read_curve(path, "cnn")
    assert [(p.concurrency, p.throughput) for p in curve.points] == [(4, 100), (8, 90)]
    plan = cap.plan(curve, cap.PlanRequest(target_rps=1500, p99_ms=10, headroom=0.0))
    assert plan.replica_capacity == 100 and plan.replicas == 15
    assert any("1 -> 2 instances gave 60.0 -> 120.0" in n for n in curve.notes)
    # measured over shared memory only: those points, with a warning that says what to do
    path.write_text(json.dumps({"model": "cnn", "objective": {}, "chosen": chosen,
                                "measurements": [m(4, 300, "cuda"), m(4, 250, "system")]}))
    shm = cap.read_curve(path, "cnn")
    assert [p.throughput for p in shm.points] == [300]
    assert any("only over cuda shared memory" in n and "--transports none" in n for n in shm.notes)


def test_reports_without_measurements_or_of_another_kind(tmp_path):
    with pytest.raises(UserError, match="no throughput measurements"):
        cap.read_curve(_validate_report(tmp_path, []), "cnn")
    with pytest.raises(UserError, match="has no model 'nope'"):
        cap.read_curve(REAL, "nope")
    other = tmp_path / "x.json"
    other.write_text("{}")
    with pytest.raises(UserError, match="neither a validate report.json nor a tune_report.json"):
        cap.read_curve(other, "cnn")


def test_plan_cli_writes_a_plan_deploy_can_read(tmp_path):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", str(ROOT / "model_repository"), "--model", "cnn", "--target-rps",
                                       "2000", "--p99-ms", "30", "--report", str(REAL), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 replica(s)" in result.output
    assert cap.load_plan(out)["replicas"] == 3
    bad = CliRunner().invoke(main, ["plan", str(ROOT / "model_repository"), "--model", "cnn", "--target-rps", "10",
                                    "--p99-ms", "1", "--report", str(REAL)])
    assert bad.exit_code == 2 and "no measured point" in bad.output


def test_find_report_takes_the_newest_of_tune_and_validate(tmp_path):
    import os

    repo = tmp_path / "repo"
    (repo / "cnn" / "tuning").mkdir(parents=True)
    with pytest.raises(UserError, match="no report found for cnn"):
        cap.find_report(repo, "cnn")
    validate = tmp_path / "repo_validation_report" / cap.VALIDATE_REPORT
    validate.parent.mkdir()
    validate.write_text("{}")
    tune = repo / "cnn" / "tuning" / cap.TUNE_REPORT
    tune.write_text("{}")
    os.utime(validate, (1, 1))
    assert cap.find_report(repo, "cnn") == tune
    os.utime(tune, (0, 0))
    assert cap.find_report(repo, "cnn") == validate
    assert cap.find_report(repo, "cnn", validate.parent) == validate


def test_plan_cli_unwritable_out_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["plan", str(ROOT / "model_repository"), "--model", "cnn", "--target-rps",
                                       "2000", "--p99-ms", "30", "--report", str(REAL),
                                       "--out", str(tmp_path / "missing" / "plan.json")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: cannot write the plan to ")
    assert "No such file or directory" in result.output and "Traceback" not in result.output


def _tune_report(**changes) -> dict:
    row = {"instances": 1, "max_queue_delay_us": 0, "status": "ok", "concurrency": 1, "throughput": 100.0,
           "p99_ms": 5.0}
    data = {"model": "cnn", "objective": "max-throughput", "chosen": {"instances": 1, "max_queue_delay_us": 0},
            "measurements": [row]}
    for key, value in changes.items():
        if key.startswith("row_"):
            row[key[4:]] = value
        else:
            data[key] = value
    return data


@pytest.mark.parametrize("data, message", [
    ([1, 2], "not a JSON object"),
    ({"models": {"cnn": 1}, "server": {}}, "models is dict, not a list"),
    ({"models": [{"name": "cnn", "perf": [{"concurrency": 1, "throughput": 5.0}]}], "server": {}}, "has no 'p99_ms'"),
    ({"models": [{"name": "cnn", "perf": ["x"]}], "server": {}}, "a measurement is str"),
    ({"models": [{"name": "cnn", "perf": []}], "server": {}}, "holds no throughput measurements"),
    (_tune_report(row_throughput=float("nan")), "is not valid"),
    (_tune_report(row_p99_ms=-1.0), "is not valid"),
    (_tune_report(row_concurrency="8"), "is not valid"),
    (_tune_report(measurements={"a": 1}), "measurements is dict"),
    (_tune_report(chosen=[1]), "the chosen config is list"),
    (_tune_report(chosen={"instances": "two", "max_queue_delay_us": 0}), "chosen instance count 'two'"),
    (_tune_report(row_preferred="4"), "preferred batch sizes '4' are not a list of integers"),
])
def test_malformed_reports_are_one_line_errors(tmp_path, data, message):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))  # json.dumps writes NaN as the JavaScript literal, as a broken writer would
    with pytest.raises(UserError, match=message):
        cap.read_curve(path, "cnn")


def test_absurd_plans_are_refused_and_deploy_refuses_absurd_plan_files(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(_tune_report(row_throughput=1e-300)))
    with pytest.raises(UserError, match="needs .* replicas .* more than 10000"):
        cap.plan(cap.read_curve(path, "cnn"), cap.PlanRequest(target_rps=1e3, p99_ms=10))
    with pytest.raises(UserError, match="--target-rps must be a finite number"):
        cap.PlanRequest(target_rps=float("inf"), p99_ms=10)
    for plan in ({"replicas": 10 ** 303, "gpus_per_replica": 1, "p99_ms": 5}, {"replicas": 2, "gpus_per_replica": 1},
                 {"replicas": True, "gpus_per_replica": 1, "p99_ms": 5}, [1]):
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        with pytest.raises(UserError, match="is not a capacity plan written by"):
            cap.load_plan(tmp_path / "plan.json")


def test_plan_reads_nothing_through_a_symlinked_config(tmp_path):
    """A config.pbtxt symlinked to a private file would put its first token into the error."""
    import shutil

    shutil.copytree(ROOT / "model_repository" / "cnn", tmp_path / "repo" / "cnn")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET token\n")
    (tmp_path / "repo" / "cnn" / "config.pbtxt").unlink()
    (tmp_path / "repo" / "cnn" / "config.pbtxt").symlink_to(secret)
    with pytest.raises(UserError, match="refusing to read .*cnn: config.pbtxt is a symlink") as info:
        cap.read_curve(REAL, "cnn", tmp_path / "repo" / "cnn")
    assert "TOPSECRET" not in str(info.value)
