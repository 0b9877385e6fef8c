"""Plan version stamps against the machine or container that would load them, and the refusals
``build-plan`` and the embedded server's validation make (no TensorRT here: the comparison and the
messages are tested, no plan is built)."""

import json

import pytest

from aitune_triton import tensorrt_model
from aitune_triton.errors import UserError
from aitune_triton.tensorrt import stamp as st
from aitune_triton.tensorrt.section import PlanStatus, TensorRTSection
from aitune_triton.tensorrt.stamp import LoaderFacts, gpu_problem, require_loadable, stamp_problems, tensorrt_problem

HOPPER_10_6 = {"tensorrt_version": "10.6.0.26", "compute_capability": "9.0", "version_compatible": False,
               "hardware_compatibility_level": None}


@pytest.mark.parametrize("built, compatible, loader, refused", [
    ("10.6.0.26", False, "10.6.0.26", False),
    ("10.6.0.26", False, "10.6.0", False),       # a container known by three components
    ("10.6.0.26", False, "10.7.0", True),
    ("10.6.0.26", False, "10.6.1", True),
    ("10.6.0.26", True, "10.9.0", False),        # version compatible: newer of the same major loads it
    ("10.6.0.26", True, "10.3.0", True),         # ... an older one does not
    ("10.6.0.26", True, "11.0.0", True),         # ... nor another major
    ("10.6.0.26", False, None, False),           # nothing known about the loader: no verdict
])
def test_tensorrt_rules(built, compatible, loader, refused):
    assert (tensorrt_problem(built, compatible, loader) is not None) is refused


@pytest.mark.parametrize("built_cc, level, loader_cc, refused", [
    ("9.0", None, "9.0", False),
    ("9.0", None, "8.9", True),
    ("9.0", "same_compute_capability", "8.0", True),
    ("9.0", "ampere_plus", "8.6", False),
    ("9.0", "ampere_plus", "7.5", True),
    ("9.0", None, None, False),
])
def test_gpu_rules(built_cc, level, loader_cc, refused):
    assert (gpu_problem(built_cc, level, loader_cc) is not None) is refused


def test_refusal_is_one_line_with_the_fix():
    loader = LoaderFacts("10.13.0.35", "8.9")
    assert len(stamp_problems(HOPPER_10_6, loader)) == 2
    with pytest.raises(UserError, match="^repo/cnn_trt/1/model.plan does not match this machine: ") as info:
        require_loadable(HOPPER_10_6, loader, "repo/cnn_trt/1/model.plan", "aitune-triton build-plan repo --force")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("repo/cnn_trt/1/model.plan does not match this machine: plan built with TensorRT "
                              "10.6.0.26 (not version compatible); this machine has TensorRT 10.13.0.35; plan built "
                              "for compute capability 9.0 (not hardware compatible); this machine has 8.9")
    assert "rebuild it there with `aitune-triton build-plan repo --force`" in message
    assert "version_compatible=True, compatibility_level='ampere_plus'" in message
    require_loadable(HOPPER_10_6, LoaderFacts("10.6.0.26", "9.0"), "p", "cmd")  # a match passes


def test_describe_stamp():
    stamp = {**HOPPER_10_6, "version_compatible": True, "hardware_compatibility_level": "ampere_plus"}
    assert st.describe_stamp(stamp) == ("TensorRT 10.6.0.26, compute capability 9.0, version compatible, "
                                        "hardware compatible (ampere_plus)")


@pytest.fixture
def built_repo(tmp_path):
    """A repository as build-plan leaves it: the home model's manifest says built, with a stamp."""
    home = tmp_path / "repo" / "cnn"
    (home / "tensorrt").mkdir(parents=True)
    (home / "tensorrt" / "model.onnx").write_bytes(b"onnx")
    section = TensorRTSection(status=PlanStatus.BUILT, model_name="cnn_trt", onnx="tensorrt/model.onnx",
                              stamp=HOPPER_10_6)
    return tmp_path / "repo", home, section


def test_build_plan_keeps_a_plan_that_matches(built_repo):
    repo, home, section = built_repo
    kept = tensorrt_model.existing_plan(repo, home, section, LoaderFacts("10.6.0.26", "9.0"))
    assert kept.name == "cnn_trt" and kept.status == "ready"
    assert kept.detail.startswith("already built, matches this machine (TensorRT 10.6.0.26, compute capability 9.0")


def test_build_plan_refuses_a_plan_that_does_not(built_repo):
    repo, home, section = built_repo
    with pytest.raises(UserError, match=r"cnn_trt/1/model\.plan does not match this machine: plan built with "
                                        r"TensorRT 10\.6\.0\.26 .*rebuild it there with `aitune-triton build-plan "
                                        r".*repo --model cnn --force`"):
        tensorrt_model.existing_plan(repo, home, section, LoaderFacts("10.13.0.35", "9.0"))


def test_refusal_here_without_tensorrt_gives_no_verdict():
    # this machine has no TensorRT and no GPU: nothing to compare, so nothing is refused
    assert st.this_machine().tensorrt_version is None
    assert st.refusal_here(HOPPER_10_6, "p", "cmd") is None
    assert st.refusal_here(None, "p", "cmd") is None


def test_section_round_trip_and_bad_values():
    section = TensorRTSection(status="built", model_name="m", stamp=HOPPER_10_6)
    assert section.status is PlanStatus.BUILT
    assert TensorRTSection.from_dict(json.loads(json.dumps(section.to_dict()))) == section
    with pytest.raises(ValueError, match="unknown tensorrt field"):
        TensorRTSection.from_dict({"status": "built", "tensorrt_version": "10.6"})
    with pytest.raises(ValueError, match="'half-built' is not a valid PlanStatus"):
        TensorRTSection.from_dict({"status": "half-built"})
