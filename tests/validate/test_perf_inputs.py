"""perf_analyzer's requests, one home for validate and tune: both send the same recorded inputs
with the same ``--shape``; a BF16 input (which perf_analyzer's JSON cannot carry) means random
data in both, and a raw-data pipeline's rows go as BYTES (``tests/test_pipeline.py``)."""

from __future__ import annotations

import json

from aitune_triton.triton.perf import PerfOptions
from aitune_triton.validate import harness
from aitune_triton.validate.checks.target import ModelTarget
from aitune_triton.validate.perf_inputs import perf_input_options
from aitune_triton.tune.options import tune_perf_options
from aitune_triton.tune.search import perf_inputs


def test_tune_sends_what_validate_sends(tokens, tmp_path):
    """tune sent every recorded case (sequence lengths 6, 10 and 8) without --shape, where validate
    sends the cases of the first case's shapes with --shape, which perf_analyzer needs."""
    validate = harness.perf_options(tokens, harness.ValidateOptions(), tmp_path / "validate")
    tune = perf_inputs(tokens.model_dir, tokens.manifest, tune_perf_options(), tmp_path / "tune")
    assert tune.shapes == validate.shapes == {"ids": (6,), "mask": (6,)}
    assert json.loads(tune.input_data.read_text()) == json.loads(validate.input_data.read_text())
    given = perf_inputs(tokens.model_dir, tokens.manifest, PerfOptions(shapes={"ids": (6,)}), tmp_path / "given")
    assert given.shapes == {"ids": (6,), "mask": (6,)}


def test_a_bf16_input_gets_random_data_in_tune_too(model_dir_factory, tmp_path):
    """reference.npz holds BF16 as float32: tune wrote it as a float list perf_analyzer reads as the
    wrong size, where validate already fell back to random data at the recorded shapes."""
    target = ModelTarget.load(model_dir_factory(tmp_path, "mixed", "bf16"))
    assert perf_input_options(target, tmp_path) == (None, {"x": (4,), "ids": (4,)})
    tune = perf_inputs(target.model_dir, target.manifest, tune_perf_options(), tmp_path)
    assert tune.input_data is None and tune.shapes == {"x": (4,), "ids": (4,)}
    assert not list(tmp_path.glob("*.json"))


def test_without_reference_cases_dynamic_dims_get_the_common_recorded_size(tokens, tmp_path):
    import dataclasses

    bare = dataclasses.replace(tokens, reference=())
    data, shapes = perf_input_options(bare, tmp_path)
    assert data is None and set(shapes) == {"ids", "mask"} and shapes["ids"] == shapes["mask"]
    assert shapes["ids"][0] in (6, 8, 10)
