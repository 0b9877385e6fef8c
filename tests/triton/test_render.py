"""Rendered configs: golden files per backend and profile layout, the schema check, escaping,
and a property test over random specs."""
import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from aitune_triton.errors import ModelError
from aitune_triton.spec import AxisKind, AxisSpec, IOSpec, TensorSpec
from aitune_triton.profile_set import ProfileMode, ProfileSet, TensorRTProfile
from aitune_triton.tensorrt.profiles import derive_profiles
from aitune_triton.triton import mapping as m
from aitune_triton.triton.render import check_config, config_problems, config_text, parse_config, render_config, \
    write_config

GOLDEN = Path(__file__).parent.parent / "golden"
B = AxisSpec(AxisKind.BATCH, 1, 16, 8)
SPEC = IOSpec(
    (TensorSpec("image", "float32", (B, AxisSpec(AxisKind.STATIC, 3, 3, 3), AxisSpec(AxisKind.DYNAMIC, 16, 32, 32)),
                "arg:0"),
     TensorSpec("ids", "int64", (B,), "arg:1")),
    (TensorSpec("logits", "float16", (B, AxisSpec(AxisKind.STATIC, 10, 10, 10)), "output:0"),),
    True, (1, 16))


def _profiles(n):
    ps = []
    for opt, mx in [(4, 16), (16, 16)][:n]:
        ps.append(TensorRTProfile().add_input_shape("image", (1, 3, 16), (opt, 3, 32), (mx, 3, 32))
                  .add_input_shape("ids", (1,), (opt,), (mx,)))
    return ProfileSet(tuple(ps), "custom", 16)


CASES = {
    "python_cpu": dict(backend="python", profiles=1, kind="KIND_CPU"),
    "python_gpu": dict(backend="python", profiles=1, kind="KIND_GPU"),
    # two GPUs visible at generate time: the placement is written out, 2 instances on each
    "python_gpu_placed": dict(backend="python", profiles=1, kind="KIND_GPU", visible_gpus=2),
    "onnxruntime_trt": dict(backend="onnxruntime", profiles=1, kind="KIND_GPU",
                            ort_tensorrt=(("precision_mode", "FP16"), ("trt_engine_cache_enable", "1"))),
    "tensorrt_single": dict(backend="tensorrt", profiles=1),
    "tensorrt_multi": dict(backend="tensorrt", profiles=2, cuda_graphs=True),
}


def _render(case):
    c = dict(CASES[case])
    plan = m.plan_model_config(SPEC, _profiles(c.pop("profiles")), m.MappingOptions(
        name="demo", backend=c.pop("backend"), max_batch_size=16, instances=2, kind=c.pop("kind", "KIND_GPU"),
        queue_delay_us=250, use_cuda_graphs=c.pop("cuda_graphs", False),
        warmup_dims={"image": (3, 32), "ids": (1,)}, ort_tensorrt=c.pop("ort_tensorrt", ()),
        visible_gpus=c.pop("visible_gpus", 0)))
    return render_config(plan)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case):
    text = _render(case)
    golden = GOLDEN / ("%s.pbtxt" % case)
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), "rendered config changed; rerun with UPDATE_GOLDEN=1 if intended"


def test_multi_profile_fields():
    cfg = parse_config(_render("tensorrt_multi"))
    assert list(cfg.instance_group[0].profile) == ["0", "1"]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 16]
    assert [g.batch_size for g in cfg.optimization.cuda.graph_spec] == [4, 16]
    assert list(cfg.input[1].dims) == [1] and list(cfg.input[1].reshape.shape) == []


def test_check_names_the_field():
    cfg = parse_config(_render("tensorrt_single"))
    cfg.dynamic_batching.preferred_batch_size.append(64)
    cfg.instance_group[0].profile.append("3")
    problems = "; ".join(config_problems(cfg, num_profiles=1))
    assert "preferred_batch_size: 64" in problems and "instance_group.profile: '3'" in problems
    with pytest.raises(ModelError, match="preferred_batch_size"):
        check_config(cfg, 1)


def test_hostile_description_cannot_inject_fields():
    plan = m.plan_model_config(SPEC, None, m.MappingOptions(
        name="demo", backend="python", max_batch_size=16,
        description='x"\nmax_batch_size: 999\n# "'))
    cfg = parse_config(render_config(plan))
    assert cfg.max_batch_size == 16


dims_st = st.lists(st.tuples(st.sampled_from(["static", "dynamic"]), st.integers(1, 8)), max_size=3)


@settings(max_examples=60, deadline=None)
@given(inputs=st.lists(st.tuples(st.sampled_from(list(m.TRITON_DTYPES)), dims_st), min_size=1, max_size=3),
       batching=st.booleans(), max_batch=st.integers(1, 64), n_profiles=st.integers(1, 3),
       backend=st.sampled_from(["python", "tensorrt", "onnxruntime"]), instances=st.integers(1, 4))
def test_random_specs_render_valid_configs(inputs, batching, max_batch, n_profiles, backend, instances):
    tensors = []
    for i, (dtype, axes) in enumerate(inputs):
        spec_axes = [AxisSpec(AxisKind.BATCH, 1, max_batch, 1)] if batching else []
        spec_axes += [AxisSpec(AxisKind(kind), n, n * 2 if kind == "dynamic" else n, n) for kind, n in axes]
        tensors.append(TensorSpec("in_%d" % i, dtype, tuple(spec_axes), "arg:%d" % i))
    spec = IOSpec(tuple(tensors), (TensorSpec("out", "float32", tensors[0].axes, "output:0"),), batching,
                  (1, max_batch) if batching else ())
    profile_set = derive_profiles(spec, [], ProfileMode.SINGLE, max_batch if batching else None)
    profile_set = ProfileSet(profile_set.profiles * n_profiles, "custom", profile_set.max_batch_size)
    plan = m.plan_model_config(spec, profile_set, m.MappingOptions(
        name="p", backend=backend, max_batch_size=max_batch, instances=instances, use_cuda_graphs=True,
        kind="KIND_GPU", warmup_dims={t.name: tuple(a.max for a in t.axes if a.kind is not AxisKind.BATCH)
                                      for t in tensors}))
    cfg = parse_config(render_config(plan))
    assert cfg.max_batch_size == (max_batch if batching else 0)
    assert len(cfg.input) == len(tensors)
    for c in cfg.input:
        assert len(c.dims) >= 1 and all(d == -1 or d > 0 for d in c.dims)
    if backend == "tensorrt" and n_profiles > 1:
        assert list(cfg.instance_group[0].profile) == [str(i) for i in range(n_profiles)]
    assert all(0 < p <= cfg.max_batch_size for p in cfg.dynamic_batching.preferred_batch_size)


TUNED = """
name: "m"
backend: "python"
max_batch_size: 16
input { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "y" data_type: TYPE_FP32 dims: [ 4 ] }
instance_group { count: 2 kind: KIND_CPU }
dynamic_batching { max_queue_delay_microseconds: 0 }
"""


def test_config_text_is_checked_and_round_trips_with_its_header():
    cfg = parse_config(TUNED)
    text = config_text(cfg, "tuned\nby a test")
    assert text.startswith("# tuned\n# by a test\n") and "max_queue_delay_microseconds: 0" in text
    assert parse_config(text) == cfg
    cfg.instance_group[0].count = 0
    with pytest.raises(ModelError, match="instance_group.count: must be >= 1"):
        config_text(cfg)


def test_write_config_writes_checked_text_only(tmp_path):
    path = write_config(tmp_path, config_text(parse_config(TUNED), "first"))
    assert path == tmp_path / "config.pbtxt" and path.read_text().startswith("# first\n")
    with pytest.raises(ModelError, match="does not parse as a Triton ModelConfig"):
        write_config(tmp_path, "name: [")
    with pytest.raises(ModelError, match="dynamic_batching: needs max_batch_size > 0"):
        write_config(tmp_path, TUNED.replace("max_batch_size: 16", "max_batch_size: 0"))
    assert path.read_text().startswith("# first\n")  # a refused text leaves the config as it was
    assert [p.name for p in tmp_path.iterdir()] == ["config.pbtxt"]  # no temp file left behind
