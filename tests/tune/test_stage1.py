"""Stage-1 selection of the fallback format (``tune.stage1.select_fallback``) on real builds of a
small model: the tolerance each output is judged by, and what is left in the model directory."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from aitune_triton.errors import ModelError
from aitune_triton.numerics import DEFAULT_TOLERANCES
from aitune_triton.prepared import _build_fallback, prepare
from aitune_triton.tune.stage1 import select_fallback

MODEL = '''
import torch

class Half(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.lin(x).half()

def get_model():
    torch.manual_seed(0)
    return Half().eval()

def get_samples():
    return [torch.randn(b, 8, generator=torch.Generator().manual_seed(b)) for b in (1, 2)]
'''


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    model_py = tmp_path_factory.mktemp("half") / "model.py"
    model_py.write_text(MODEL)
    return prepare(model_py, {"backends": ("python",), "portable": True})


def _select(prep, model_dir: Path, outputs, build=None):
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True)
    return select_fallback(build or functools.partial(_build_fallback, prep), prep.spec, prep.source.samples,
                           outputs, prep.profiles, prep.device, True, None, version_dir, "min-latency",
                           lambda message: None, prep.config.tolerance_override)


def test_a_float16_output_is_judged_by_float16s_tolerance(prep, tmp_path):
    """Before: every candidate was judged at float32's 1e-4/1e-3, so float16 rounding noise (here
    5e-3 on every element, well inside float16's 1e-2) failed export and eager alike."""
    assert prep.spec.outputs[0].dtype == "float16"
    noisy = [o + torch.full_like(o, 5e-3) for o in prep.outputs]
    artifact, selection = _select(prep, tmp_path / "m", noisy)
    assert {r.name for r in selection.rows} == {"export", "eager"}
    for row in selection.rows:
        assert row.accuracy.ok, row.accuracy.summary()
        assert row.accuracy.to_dict()["outputs"][0]["tolerance"] == DEFAULT_TOLERANCES["float16"].to_dict()
    assert artifact.format == (selection.chosen or "eager")


def _failing(prep, fmt: str):
    """The real build, except ``fmt``, which leaves a file in its trial directory and fails as AOTI often does."""
    def build(trial: Path, which: str):
        if which == fmt:
            (trial / "half_written.bin").write_bytes(b"\0" * 16)
            raise ModelError("%s does not reproduce eager" % which)
        return _build_fallback(prep, trial, which)
    return build


def test_a_format_that_fails_to_build_leaves_no_trial_directory(prep, tmp_path):
    """Before: a format raising ModelError kept its .trial-<fmt>/ inside the generated model directory."""
    artifact, selection = _select(prep, tmp_path / "m", prep.outputs, _failing(prep, "export"))
    assert [r.name for r in selection.rows] == ["eager"] and artifact.format == "eager"
    assert not list((tmp_path / "m").glob(".trial-*"))


def test_nothing_usable_and_no_eager_is_a_one_line_model_error(prep, tmp_path):
    """Before: eager failing to build while export missed the reference raised KeyError('eager')."""
    wrong = [o * 3 + 1 for o in prep.outputs]
    with pytest.raises(ModelError, match=r"^no fallback format is usable: eager did not build \(see --debug\) and "
                                         r"export output_0: .*elements outside") as info:
        _select(prep, tmp_path / "m", wrong, _failing(prep, "eager"))
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "m").glob(".trial-*"))


def test_any_failure_after_the_builds_removes_every_trial_directory(prep, tmp_path):
    version_dir = tmp_path / "m" / "1"
    version_dir.mkdir(parents=True)

    def progress(message: str) -> None:
        if message.startswith("stage-1 tuning: measuring"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        select_fallback(functools.partial(_build_fallback, prep), prep.spec, prep.source.samples, prep.outputs,
                        prep.profiles, prep.device, True, None, version_dir, "min-latency", progress)
    assert not list((tmp_path / "m").glob(".trial-*"))
