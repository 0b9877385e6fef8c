"""The tuning session's options: validation, and the CLI options that build them (one-line errors)."""

from __future__ import annotations

import pytest

from aitune_triton.errors import UserError
from aitune_triton.tune.options import TuneOptions

def test_tune_options_validation():
    assert TuneOptions(instances=[1, 2]).instances == (1, 2)
    with pytest.raises(UserError, match="unknown objective 'fastest'; choose from max-throughput"):
        TuneOptions(objective="fastest")
    with pytest.raises(UserError, match="queue delays must be >= 0"):
        TuneOptions(delays_us=(-1,))
    with pytest.raises(UserError, match="finalists and rounds must be >= 1"):
        TuneOptions(rounds=0)
    with pytest.raises(UserError, match="max_measurements must be >= 1"):
        TuneOptions(max_measurements=0)

def test_transport_and_gpu_options_parse_and_bad_values_are_one_line(tmp_path):
    from click.testing import CliRunner

    from aitune_triton.cli import main
    from aitune_triton.tune.options import parse_transports, parse_visible_gpus

    assert parse_transports("auto") is None and parse_transports("none, system") == ("none", "system")
    assert parse_visible_gpus("auto") is None and parse_visible_gpus("2") == 2
    assert TuneOptions(transports=["system"]).transports == ("system",)
    with pytest.raises(UserError, match="transports must be distinct values of none, system, cuda"):
        parse_transports("none,nvlink")
    with pytest.raises(UserError, match="transports must be distinct"):
        TuneOptions(transports=("none", "none"))
    with pytest.raises(UserError, match="needs a GPU visible"):
        TuneOptions(transports=("cuda",), visible_gpus=0)
    (tmp_path / "repo").mkdir()
    for args, message in ((["--transports", "tcp"], "transports must be distinct values of none, system, cuda"),
                          (["--visible-gpus", "two"], "--visible-gpus takes auto or a GPU count, got 'two'"),
                          (["--visible-gpus", "-1"], "--visible-gpus must be >= 0"),
                          (["--transports", "cuda", "--visible-gpus", "0"], "needs a GPU visible to the server"),
                          (["--perf-stability", "0"], "--perf-stability must be in (0, 100], got 0")):
        out = CliRunner().invoke(main, ["tune", str(tmp_path / "repo"), "--model", "m"] + args)
        assert out.exit_code == 2, out.output
        assert len(out.output.strip().splitlines()) == 1 and message in out.output, out.output


def test_perf_stability_reaches_perf_analyzer():
    from aitune_triton.tune.measure import perf_flags
    from aitune_triton.tune.options import tune_perf_options

    assert TuneOptions().perf.stability_percentage == 30.0
    assert perf_flags(tune_perf_options(80.0))["stability-percentage"] == 80



def test_tune_checks_integrity_and_a_writable_model_dir_before_any_server(tmp_path, remount):
    """A changed artifact is refused as validate refuses it; a read-only repository is one line
    naming it (it ended in `internal error: OSError`)."""
    import shutil
    from pathlib import Path

    from aitune_triton.errors import ModelError, UserError
    from aitune_triton.tune.search import check_tunable

    root = Path(__file__).resolve().parents[2]
    repo = tmp_path / "repo"
    shutil.copytree(root / "model_repository", repo)
    assert check_tunable(repo, "cnn").name == "cnn"
    with pytest.raises(UserError, match="model name 'cnn\\\\n' is not allowed"):
        check_tunable(repo, "cnn\n")
    remount(repo, "ro")
    with pytest.raises(UserError, match="cannot write the tuned config.pbtxt and the manifest into .*cnn: it is not "
                                        "writable"):
        check_tunable(repo, "cnn")
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy)
    (copy / "cnn" / "1" / "aitune_runtime.py").write_text("import os\n")
    with pytest.raises(ModelError, match="1/aitune_runtime.py does not match its recorded SHA-256"):
        check_tunable(copy, "cnn")


def test_tune_of_an_unknown_model_is_one_line_listing_the_known_ones(tmp_path):
    """`tune REPO --model nope` ended in `internal error: FileNotFoundError`; validate and
    pack-env already refused it in one line."""
    import shutil
    from pathlib import Path

    from click.testing import CliRunner

    from aitune_triton.cli import main

    root = Path(__file__).resolve().parents[2]
    repo = tmp_path / "repo"
    shutil.copytree(root / "model_repository", repo)
    out = CliRunner().invoke(main, ["tune", str(repo), "--model", "nope"])
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines() == ["error: unknown model nope in %s; known: cnn" % repo], out.output
