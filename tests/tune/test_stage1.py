"""Stage-1 selection of the fallback format (``tune.stage1.select_fallback``) on real builds of a
small model: the tolerance each output is judged by, and what is left in the model directory."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

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
