"""A plan's I/O read back from an engine (a fake with the TensorRT 10 API), its stamp and artifact."""

import json

import pytest

from aitune_triton.errors import ModelError
from aitune_triton.tensorrt import plan
from aitune_triton.tensorrt.plan import EngineIO, PlanArtifact, PlanStamp, engine_io_of


def test_engine_io_reads_tensors_and_profiles(fake_trt, fake_engine):
    trt = fake_trt()
    engine = fake_engine(trt, {"image": ("INPUT", "HALF", (-1, 3, 16, 16)), "ids": ("INPUT", "INT64", (-1, -1)),
                              "logits": ("OUTPUT", "FLOAT", (-1, 5)), "flag": ("OUTPUT", "BOOL", (-1,))},
                        [{"image": [(1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16)], "ids": [(1, 1), (4, 7), (8, 9)]},
                         {"image": [(1, 3, 16, 16), (8, 3, 16, 16), (8, 3, 16, 16)], "ids": [(1, 1), (8, 9), (8, 9)]}])
    io = engine_io_of(engine, trt)
    assert io.num_profiles == 2 and [t.name for t in io.inputs] == ["image", "ids"]
    assert [t.name for t in io.outputs] == ["logits", "flag"]
    image = io.tensor("image")
    assert image.dtype == "float16" and image.shape == (-1, 3, 16, 16)
    assert image.profile_shapes[1] == ((1, 3, 16, 16), (8, 3, 16, 16), (8, 3, 16, 16))
    assert io.tensor("ids").dtype == "int64" and io.tensor("flag").dtype == "bool"
    assert io.tensor("logits").profile_shapes == ()
    assert EngineIO.from_dict(json.loads(json.dumps(io.to_dict()))) == io


def test_engine_io_refuses_io_triton_cannot_serve(fake_trt, fake_engine):
    trt = fake_trt()
    engine = fake_engine(trt, {"x": ("INPUT", "FP8", (-1, 4))}, [{"x": [(1, 4), (1, 4), (1, 4)]}])
    with pytest.raises(ModelError, match="'x' has TensorRT type FP8"):
        engine_io_of(engine, trt)


def test_gpu_facts_never_raise():
    facts = plan.gpu_facts()
    assert set(facts) == {"gpu_name", "compute_capability", "cuda_driver_version", "cuda_runtime_version"}


def test_plan_artifact_round_trip(tmp_path):
    io = EngineIO((plan.EngineTensor("x", "input", "float32", (-1, 4), (((1, 4), (2, 4), (8, 4)),)),), 1)
    stamp = PlanStamp("10.9.0.34", "12.8", "12.8", "NVIDIA H100", "9.0", "ampere_plus", True, True, 12.5)
    art = PlanArtifact(tmp_path / "model.plan", io, stamp, "abc")
    assert PlanArtifact.from_dict(json.loads(json.dumps(art.to_dict()))) == art
    assert art.stamp_dict()["compute_capability"] == "9.0" and art.engine_io.tensor("x").dtype == "float32"


