"""Stage-2 tuning on the real embedded tritonserver 2.51 with real perf_analyzer: a tiny grid
(2 instance counts at one queue delay and concurrency 4) over the generated CPU example, its
finalists re-measured interleaved, and the Model Analyzer hand-off written."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from aitune_triton.triton import tools
from aitune_triton.triton.manifest import Manifest
from aitune_triton.reference_data import load_reference
from aitune_triton.triton.perf import PerfOptions
from aitune_triton.triton.render import check_config, parse_config
from aitune_triton.tune.points import Point
from aitune_triton.tune.options import TuneOptions
from aitune_triton.tune.search import tune_model
from aitune_triton.tune.space import current_variant

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cnn" / "model.py"

# short windows and a loose band: the test checks the mechanics, not the figures
FAST_PERF = PerfOptions(measurement_mode="time_windows", measurement_interval_ms=500, stability_percentage=50,
                        max_trials=4, timeout_s=90)
# for the tests of what is written: any three windows count as settled, however busy the machine
SETTLED_PERF = PerfOptions(measurement_mode="time_windows", measurement_interval_ms=1000, stability_percentage=1000,
                           max_trials=3, timeout_s=90)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    from aitune_triton.api import generate

    out = tmp_path_factory.mktemp("tune") / "repo"
    generate(EXAMPLE, out, overrides={"fallback_format": "export", "backends": ("python",)})
    return out


def infer(server, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        tensors = []
        for name, value in inputs.items():
            t = grpcclient.InferInput(name, list(value.shape), "FP32")
            t.set_data_from_numpy(value)
            tensors.append(t)
        return client.infer(model, tensors).as_numpy("output_0")
    finally:
        client.close()


@pytest.mark.live
def test_tune_writes_the_measured_best_and_it_loads(triton_server_factory, repo, tmp_path):
    if tools.find_perf_analyzer() is None:
        pytest.skip("perf_analyzer not installed")
    model_dir = repo / "cnn"
    original = (model_dir / "config.pbtxt").read_text()
    history_before = Manifest.load(model_dir).history
    server = triton_server_factory(repo)
    t0 = time.monotonic()
    # min_gain 0: the spreads alone decide; the best config and the current one (1 instance, 500 us: outside
    # the grid, so only the baseline, and a config is always written) in two interleaved rounds. Settled
    # windows however busy the machine: with FAST_PERF's band a loaded CI host can leave no point settled,
    # and then nothing is written, which is right for tune and wrong for this test
    options = TuneOptions(instances=(1, 2), delays_us=(1000,), concurrency=(4,), brute=True, min_gain=0.0,
                          finalists=1, rounds=2, perf=SETTLED_PERF, report_dir=tmp_path / "report",
                          export_model_analyzer=tmp_path / "ma" / "profile.yaml")
    result = tune_model(repo, "cnn", server, options)
    elapsed = time.monotonic() - t0

    assert result.grid_size == 2 and result.measured == 2
    assert result.written and result.chosen is not None, result.to_dict()
    # every settled point has a median inside its windows' spread; nothing unsettled carries a number 0
    for m in result.measurements:
        if m.ok:
            assert m.lo <= m.throughput <= m.hi and len(m.windows) == 3 and m.p99_ms > 0
        else:
            assert m.throughput is None or m.throughput > 0
    # the finalists were re-measured interleaved, and the choice is the best median among them (or the
    # current config, kept because no finalist beat it beyond the spread)
    assert 1 <= len(result.finalists) <= 2 and all(len(f.runs) == 2 for f in result.finalists)
    assert sorted(m.index for f in result.finalists for m in f.runs) == list(range(3, 3 + result.remeasured))
    round_one = [f.runs[0].index for f in result.finalists]
    assert round_one == sorted(round_one) and max(round_one) < min(f.runs[1].index for f in result.finalists)
    summaries = [f.summary() for f in result.finalists]
    feasible = [m for m in summaries if m.ok and m.point.variant in result.space.variants()]
    best = max(feasible, key=lambda m: m.throughput)
    assert result.chosen.point in (best.point, Point(result.previous, best.point.concurrency))
    assert result.chosen.lo <= result.chosen.throughput <= result.chosen.hi
    if result.improvement is not None:
        assert result.baseline is not None and result.chosen.lo > result.baseline.hi
    # the written config is valid, says what was chosen, and is what the server now runs
    text = (model_dir / "config.pbtxt").read_text()
    cfg = parse_config(text)
    check_config(cfg)
    assert current_variant(cfg) == result.chosen.point.variant
    assert text.startswith("# Tuned by aitune-triton")
    assert server.model_ready("cnn")
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        served = client.get_model_config("cnn")
    finally:
        client.close()
    assert served["instance_group"][0]["count"] == result.chosen.point.variant.instances
    assert served["dynamic_batching"].get("max_queue_delay_microseconds", 0) == result.chosen.point.variant.delay_us
    assert served["max_batch_size"] == Manifest.load(model_dir).max_batch_size
    # the tuned model still computes what eager computed
    case = load_reference(model_dir / "reference.npz")[1]
    got = infer(server, "cnn", case.inputs)
    np.testing.assert_allclose(got, case.outputs["output_0"], atol=1e-4, rtol=1e-3)
    # the previous config is kept twice: as .bak and in the manifest history
    assert (model_dir / "config.pbtxt.bak").read_text() == original
    manifest = Manifest.load(model_dir)
    assert len(manifest.history) == len(history_before) + 1
    entry = manifest.history[-1]
    assert entry.event == "tune" and entry.previous_config == original
    assert entry.chosen["instances"] == result.chosen.point.variant.instances
    assert manifest.tuning.last is not None and manifest.tuning.last.chosen == result.chosen.to_dict()
    assert manifest.tuning.last.grid_size == 2 and manifest.tuning.last.config_path == "config.pbtxt"
    assert manifest.tuning.last.chosen["transport"] == "none"  # CPU: the transport is not searched
    report = json.loads((tmp_path / "report" / "tune_report.json").read_text())
    assert report["measured"] == 2 and len(report["measurements"]) == 2
    assert report["remeasured"] == result.remeasured and report["perf_analyzer_flags"]["measurement-interval"] in (
        SETTLED_PERF.measurement_interval_ms, 2 * SETTLED_PERF.measurement_interval_ms)
    assert all(m["throughput"] != 0 for m in report["measurements"])
    ma = yaml.safe_load((tmp_path / "ma" / "profile.yaml").read_text())
    entry = ma["profile_models"]["cnn"]
    assert ma["model_repository"] == str(repo.resolve())
    assert entry["model_config_parameters"]["instance_group"][0]["count"] == [1, 2]
    assert entry["perf_analyzer_flags"]["input-data"] == str((tmp_path / "report" / "cnn_input.json").resolve())
    assert Path(entry["perf_analyzer_flags"]["input-data"]).exists()
    assert (tmp_path / "report" / "tune_variants.png").stat().st_size > 10_000
    assert "**chosen**" in (tmp_path / "report" / "tune_report.md").read_text()
    print("tune live: %.1f s for 2 variants + %d re-measurements, chosen %s" % (
        elapsed, result.remeasured, result.chosen.point.label()))


MIXING = '''\
import torch


class Centre(torch.nn.Module):
    """Each row minus the batch mean: a row's answer depends on the rows batched beside it."""

    def forward(self, x):
        return x - x.mean(dim=0, keepdim=True)


def get_model():
    return Centre()


def get_samples():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, 4, generator=g) for b in (1, 2, 4)]
'''


@pytest.mark.live
def test_tune_never_enables_dynamic_batching_for_rows_that_are_not_independent(triton_server_factory, tmp_path):
    """generate found the rows are not independent; tune measured with the batcher on and wrote it
    back, and 368 of 400 concurrent requests got wrong answers. Now no variant batches, the written
    config has no dynamic_batching, and the report says why."""
    from aitune_triton.api import generate

    if tools.find_perf_analyzer() is None:
        pytest.skip("perf_analyzer not installed")
    (tmp_path / "mixing.py").write_text(MIXING)
    repo = tmp_path / "repo"
    generate(tmp_path / "mixing.py", repo, overrides={"fallback_format": "export", "backends": ("python",)})
    model_dir = repo / "mixing"
    assert Manifest.load(model_dir).checks.batching.rows_independent is False
    server = triton_server_factory(repo)
    options = TuneOptions(instances=(1,), delays_us=(0, 2000), concurrency=(4,), brute=True, min_gain=0.0,
                          finalists=1, rounds=1, perf=FAST_PERF, report_dir=tmp_path / "report")
    result = tune_model(repo, "mixing", server, options)
    assert result.space.delays_us == (None,) and result.grid_size == 1
    assert "dynamic batching stays off: generate found that rows are not independent" in result.reason
    assert "dynamic_batching" not in (model_dir / "config.pbtxt").read_text()
    report = json.loads((tmp_path / "report" / "tune_report.json").read_text())
    assert "dynamic batching stays off" in report["reason"]
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url, concurrency=16)
    try:
        assert "dynamic_batching" not in client.get_model_config("mixing")
        rows = np.random.default_rng(0).standard_normal((64, 1, 4)).astype(np.float32)
        pending = []
        for row in rows:  # all in flight at once: a batcher would merge them
            t = httpclient.InferInput("x", [1, 4], "FP32")
            t.set_data_from_numpy(row)
            pending.append(client.async_infer("mixing", [t]))
        answers = [p.get_result().as_numpy("output_0") for p in pending]
    finally:
        client.close()
    wrong = sum(not np.allclose(a, 0.0, atol=1e-6) for a in answers)  # a row alone is its own mean
    assert wrong == 0, "%d of %d concurrent requests were answered as part of a batch" % (wrong, len(answers))


def test_a_full_disk_while_tune_writes_its_results_is_one_line_and_the_config_is_restored(
        triton_server_factory, repo, tmp_path, monkeypatch):
    """The filesystem fills up after the tuned config.pbtxt was written, while the reports are: one
    line naming the resource, the previous config.pbtxt back byte for byte, loaded again."""
    import errno
    import shutil

    from aitune_triton.errors import UserError
    from aitune_triton.tune import search

    if tools.find_perf_analyzer() is None:
        pytest.skip("perf_analyzer not installed")
    mine = tmp_path / "repo"
    shutil.copytree(repo, mine)
    before = (mine / "cnn" / "config.pbtxt").read_text()
    server = triton_server_factory(mine, load_models=("cnn",))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(search, "write_reports", disk_full)
    options = TuneOptions(instances=(1,), delays_us=(0,), concurrency=(4,), brute=True, min_gain=0.0, finalists=1,
                          rounds=1, perf=FAST_PERF, report_dir=tmp_path / "report")
    with pytest.raises(UserError, match=r"^cannot write the tuning results to .*cnn: no space left on the device$"):
        tune_model(mine, "cnn", server, options)
    assert (mine / "cnn" / "config.pbtxt").read_text() == before
    assert server.model_ready("cnn")


def _copy(repo: Path, tmp_path: Path):
    """A copy of the generated repository (an earlier test may have tuned it) and its current variant."""
    import shutil

    mine = tmp_path / "repo"
    shutil.copytree(repo, mine)
    return mine, current_variant(parse_config((mine / "cnn" / "config.pbtxt").read_text()))


def _served(server, model: str = "cnn") -> dict:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        return client.get_model_config(model)
    finally:
        client.close()


@pytest.mark.live
def test_a_kept_current_config_is_not_rewritten(triton_server_factory, repo, tmp_path):
    """decide kept the current config, and write_back still rewrote config.pbtxt through
    apply_variant: the user's comments were dropped and a history entry recorded a non-change."""
    if tools.find_perf_analyzer() is None:
        pytest.skip("perf_analyzer not installed")
    mine, current = _copy(repo, tmp_path)
    config = mine / "cnn" / "config.pbtxt"
    config.write_text("# hand-tuned for the batch jobs: keep\n" + config.read_text())
    backup = mine / "cnn" / "config.pbtxt.bak"
    before, history = config.read_bytes(), Manifest.load(mine / "cnn").history
    backup_before = backup.read_bytes() if backup.exists() else None
    server = triton_server_factory(mine, load_models=("cnn",))
    options = TuneOptions(instances=(current.instances,), delays_us=(current.delay_us,), concurrency=(4,),
                          brute=True, finalists=1, rounds=2, perf=SETTLED_PERF, report_dir=tmp_path / "report")
    result = tune_model(mine, "cnn", server, options)
    assert result.chosen is not None and result.chosen.point.variant == current, (
        result.reason, [(m.status, m.detail) for m in result.measurements])
    assert not result.written and "config.pbtxt left unchanged" in result.reason
    assert config.read_bytes() == before and (backup.read_bytes() if backup.exists() else None) == backup_before
    assert Manifest.load(mine / "cnn").history == history
    assert server.model_ready("cnn") and _served(server)["instance_group"][0]["count"] == current.instances


@pytest.mark.live
def test_write_back_checks_preferred_sizes_and_rolls_back_on_ctrl_c(triton_server_factory, repo, tmp_path,
                                                                      monkeypatch):
    """The reload check compared only instances and delay, and only a ServerError rolled back: a
    Ctrl-C after the write left an unconfirmed config with no history entry."""
    from aitune_triton.errors import ModelError
    from aitune_triton.tune import writeback
    from aitune_triton.tune.measure import LiveRunner, effective_variant
    from aitune_triton.tune.points import Variant

    if tools.find_perf_analyzer() is None:
        pytest.skip("perf_analyzer not installed")
    import re

    mine, current = _copy(repo, tmp_path)
    config = mine / "cnn" / "config.pbtxt"
    config.write_text(re.sub(r"(max_queue_delay_microseconds: \d+)", r"\1\n  preferred_batch_size: [ 2, 4 ]",
                             config.read_text()))
    current = current_variant(parse_config(config.read_text()))
    assert current.preferred == (2, 4)
    before, history = config.read_bytes(), Manifest.load(mine / "cnn").history
    server = triton_server_factory(mine, load_models=("cnn",))
    # the server reports preferred batch sizes, and the check reads them
    runner = LiveRunner(server, "cnn", parse_config(before.decode()), Manifest.load(mine / "cnn").max_batch_size, 0,
                        FAST_PERF, tmp_path / "perf")
    runner.load(Variant(current.instances, 700, (4,)))
    assert effective_variant(server, "cnn") == Variant(current.instances, 700, (4,))
    options = TuneOptions(instances=(current.instances,), delays_us=(current.delay_us + 100,), concurrency=(4,),
                          brute=True, finalists=1, rounds=2, perf=SETTLED_PERF, report_dir=tmp_path / "report")

    def other_preferred(server, model):
        return Variant(current.instances, current.delay_us + 100, (3,))

    monkeypatch.setattr(writeback, "effective_variant", other_preferred)
    with pytest.raises(ModelError, match=r"server reports .*preferred \[3\], expected"):
        tune_model(mine, "cnn", server, options)
    assert config.read_bytes() == before and Manifest.load(mine / "cnn").history == history

    def interrupted(server, model):
        raise KeyboardInterrupt

    monkeypatch.setattr(writeback, "effective_variant", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune_model(mine, "cnn", server, options)
    assert config.read_bytes() == before and Manifest.load(mine / "cnn").history == history
    served = _served(server)
    assert server.model_ready("cnn") and int(served["dynamic_batching"]["max_queue_delay_microseconds"]) == \
        current.delay_us
