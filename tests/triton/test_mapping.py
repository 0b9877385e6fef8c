"""One test per mapping rule (the Triton facts in aitune_triton/triton/mapping.py's docstring)."""
import pytest

from aitune_triton.errors import UserError
from aitune_triton.spec import AxisKind, AxisSpec, IOSpec, TensorSpec
from aitune_triton.profile_set import ProfileSet, TensorRTProfile
from aitune_triton.triton import mapping as m
from aitune_triton.triton.render import render_config


def _t(name, dtype, *axes):
    return TensorSpec(name, dtype, tuple(axes), "arg:0")


B = AxisSpec(AxisKind.BATCH, 1, 8, 4)
D = AxisSpec(AxisKind.DYNAMIC, 4, 16, 8)


def S(n):
    return AxisSpec(AxisKind.STATIC, n, n, n)


SPEC = IOSpec((_t("x", "float32", B, S(3), D),), (_t("y", "float16", B, D), _t("score", "bool", B)), True, (1, 8))


def _profiles(*batches):
    return ProfileSet(tuple(TensorRTProfile().add_input_shape("x", (1, 3, 4), (opt, 3, 8), (mx, 3, 16))
                            for opt, mx in batches), "custom", max(mx for _, mx in batches))


def test_dims_exclude_batch_and_dynamic_is_minus_one():
    assert m.tensor_config(SPEC.inputs[0]).dims == (3, -1)


def test_batch_only_tensor_uses_dims_1_with_empty_reshape():
    cfg = m.tensor_config(SPEC.outputs[1])
    assert cfg.dims == (1,) and cfg.reshape == ()


@pytest.mark.parametrize("dtype, triton", [("bool", "TYPE_BOOL"), ("bfloat16", "TYPE_BF16"), ("int64", "TYPE_INT64"),
                                           ("float16", "TYPE_FP16"), ("uint8", "TYPE_UINT8")])
def test_dtypes(dtype, triton):
    assert m.triton_dtype(dtype) == triton


def test_engine_dtype_overrides_torch_dtype():
    assert m.tensor_config(SPEC.inputs[0], "int32").data_type == "TYPE_INT32"


def test_max_batch_zero_without_batch_axis():
    spec = IOSpec((_t("x", "float32", S(2), D),), (_t("y", "float32", S(2)),), False)
    assert m.max_batch_size(spec, 8, None) == 0


def test_max_batch_never_above_profiles_of_a_group():
    ps = _profiles((2, 4), (8, 8))
    group = m.InstanceGroup(1, "KIND_GPU", profiles=("0",))
    with pytest.raises(UserError, match="above what the TensorRT profiles allow"):
        m.max_batch_size(SPEC, 8, ps, [group])
    assert m.max_batch_size(SPEC, 8, ps, [m.InstanceGroup(1, "KIND_GPU", profiles=("0", "1"))]) == 8


def test_multi_profile_groups_list_every_profile():
    (group,) = m.instance_groups(2, "KIND_GPU", num_profiles=3)
    assert group.profiles == ("0", "1", "2") and group.count == 2
    (single,) = m.instance_groups(1, "KIND_CPU", num_profiles=1)
    assert single.profiles == ()


def test_gpus_only_for_gpu_instances():
    with pytest.raises(UserError, match="gpus can only be given for GPU instances"):
        m.instance_groups(1, "KIND_CPU", gpus=(0,))


def test_gpu_placement_defaults_to_every_visible_gpu():
    assert m.gpu_placement("KIND_GPU", (), visible=2) == (0, 1)
    assert m.gpu_placement("KIND_GPU", (), visible=0) == ()  # nothing seen: Triton's default, no guess
    assert m.gpu_placement("KIND_GPU", (1,), visible=2) == (1,)
    assert m.gpu_placement("KIND_CPU", (), visible=2) == ()


def test_gpu_placement_refuses_bad_lists():
    with pytest.raises(UserError, match="distinct GPU indices"):
        m.gpu_placement("KIND_GPU", (0, 0), visible=2)
    with pytest.raises(UserError, match="distinct GPU indices"):
        m.gpu_placement("KIND_GPU", (-1,), visible=2)
    with pytest.raises(UserError, match="only be given for GPU instances"):
        m.gpu_placement("KIND_CPU", (0,), visible=2)


def test_gpu_placement_beyond_this_machine_warns(caplog):
    assert m.gpu_placement("KIND_GPU", (0, 3), visible=2) == (0, 3)
    assert "Triton will refuse to load the model on a host without GPU 3" in caplog.text


@pytest.mark.parametrize("backend,kind,visible,gpus,expected", [
    ("python", "KIND_GPU", 2, (), (0, 1)),
    ("python", "KIND_GPU", 2, (1,), (1,)),
    ("python", "KIND_CPU", 2, (), ()),
    ("tensorrt", "KIND_CPU", 4, (), (0, 1, 2, 3)),  # a plan always runs on GPU instances
])
def test_plan_places_instances(backend, kind, visible, gpus, expected):
    plan = m.plan_model_config(SPEC, None, m.MappingOptions(name="x", backend=backend, max_batch_size=8, instances=2,
                                                            kind=kind, gpus=gpus, visible_gpus=visible))
    (group,) = plan.instance_groups
    assert group.gpus == expected and group.count == 2


def test_preferred_sizes_only_for_multi_profile_plans():
    ps = _profiles((2, 8), (8, 8))
    assert m.dynamic_batching(SPEC, 8, 100, ps, multi_profile_plan=True).preferred_batch_sizes == (2, 8)
    assert m.dynamic_batching(SPEC, 8, 100, ps, multi_profile_plan=False).preferred_batch_sizes == ()
    assert m.dynamic_batching(SPEC, 4, 100, ps, multi_profile_plan=True).preferred_batch_sizes == (2,)


def test_graph_specs_from_profile_opt_shapes():
    ps = _profiles((2, 8), (8, 8))
    specs = m.graph_specs(SPEC, ps, 8, (2, 8))
    assert [g.batch_size for g in specs] == [2, 8]
    assert specs[0].inputs == (("x", (3, 8)),)


def test_warmup_batch_one_and_max():
    w = m.warmup(SPEC, 8, {"x": (3, 8)})
    assert [x.batch_size for x in w] == [1, 8] and w[0].inputs[0].dims == (3, 8)


def test_trt_plan_is_gpu_with_profile_parameters():
    plan = m.plan_model_config(SPEC, _profiles((2, 8), (8, 8)), m.MappingOptions(
        name="m", backend="tensorrt", max_batch_size=8, use_cuda_graphs=True))
    assert plan.instance_groups[0].kind == "KIND_GPU" and plan.platform == "tensorrt_plan"
    assert ("execution_context_allocation_strategy", "ON_PROFILE_CHANGE") in plan.parameters
    assert plan.cuda_graphs and plan.model_filename == "model.plan"


def test_python_gpu_keeps_tensors_on_gpu():
    plan = m.plan_model_config(SPEC, None, m.MappingOptions(name="m", backend="python", max_batch_size=8,
                                                            kind="KIND_GPU"))
    assert ("FORCE_CPU_ONLY_INPUT_TENSORS", "no") in plan.parameters and plan.backend_name == "python"
    assert plan.platform is None and not plan.cuda_graphs


def test_generate_config_gpus():
    from aitune_triton.config import GenerateConfig

    assert GenerateConfig(gpus=[1, 0]).gpus == (1, 0)
    assert GenerateConfig.from_dict(GenerateConfig(gpus=(0, 1)).to_dict()).gpus == (0, 1)
    for bad in ([0, 0], [-1], [], ["0"]):
        with pytest.raises(UserError, match="gpus must be distinct GPU indices"):
            GenerateConfig(gpus=bad)


def test_rows_found_dependent_keep_max_batch_but_get_no_dynamic_batching():
    import dataclasses

    dependent = dataclasses.replace(SPEC, rows_independent=False, row_dependence="output 'y' differs")
    assert not dependent.dynamic_batching_ok and m.dynamic_batching(dependent, 8, 100, None, False) is None
    assert m.max_batch_size(dependent, 8, None) == 8
    assert m.dynamic_batching(dataclasses.replace(SPEC, rows_independent=None), 8, 100, None, False) is not None


def test_client_shape_notes_name_each_batch_only_output():
    (note,) = m.client_shape_notes(SPEC)  # 'score' has only the batch axis, 'y' has more
    assert note.startswith("output 'score' is served as dims [1] with reshape []")
    assert "clients receive shape [batch, 1] where eager PyTorch returns [batch]" in note
    scalar = IOSpec((_t("x", "float32", S(2)),), (_t("total", "float32"),), False)
    assert "receive shape [1] where eager PyTorch returns [] (a scalar)" in m.client_shape_notes(scalar)[0]


def test_batch_only_inputs_get_the_same_note_as_outputs():
    spec = IOSpec((_t("index", "int32", B), _t("x", "float32", B, S(3))), (_t("y", "float32", B),), True)
    notes = m.client_shape_notes(spec)
    assert notes[0] == ("input 'index' is served as dims [1] with reshape [] (Triton refuses empty dims): clients send "
                        "shape [batch, 1] where eager PyTorch takes [batch]")
    assert notes[1].startswith("output 'y' is served as dims [1] with reshape []") and len(notes) == 2


def test_scalars_of_a_model_without_batch_axis_are_dims_1_without_reshape():
    """Triton refuses an empty reshape for a non-batching model ("scalar tensors are not supported")."""
    spec = IOSpec((_t("t", "float32"),), (_t("total", "float32"),), False)
    assert m.tensor_config(spec.inputs[0]) == m.TensorConfig("t", "TYPE_FP32", (1,), None)
    plan = m.plan_model_config(spec, None, m.MappingOptions(name="s", backend="python", max_batch_size=0))
    text = render_config(plan)
    assert "reshape" not in text and text.count("dims: [ 1 ]") == 2
