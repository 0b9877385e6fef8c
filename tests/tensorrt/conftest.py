"""Shared by the TensorRT tests: a small two-input model with its samples and profiles, and fakes
of the ``tensorrt`` module and of an engine that follow the TensorRT 10 Python API (TensorRT itself
is not installed where these tests usually run)."""

import enum
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from aitune_triton.spec import normalize_sample, record_spec
from aitune_triton.tensorrt.profiles import ProfileMode, derive_profiles


def _trt_import_error():
    try:
        import tensorrt
    except Exception as exc:
        return "%s: %s" % (type(exc).__name__, exc)
    if getattr(tensorrt, "__file__", None) is None:  # a namespace package: only tensorrt-stubs
        return "only the TensorRT type stubs are installed"
    return None



TRT_MISSING = _trt_import_error()


@pytest.fixture
def no_tensorrt():
    """For tests of what happens without TensorRT."""
    if TRT_MISSING is None:
        pytest.skip("TensorRT is installed here")


@pytest.fixture
def real_tensorrt():
    """For real builds: the full TensorRT builder (and a GPU)."""
    if TRT_MISSING is not None:
        pytest.skip("needs the full TensorRT builder (%s)" % TRT_MISSING)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, image, scale):
        return self.head(self.conv(image).mean((2, 3)) * scale)


@pytest.fixture(scope="module")
def recorded():
    torch.manual_seed(0)
    model = Net().eval()
    raw = [(torch.randn(b, 3, 16, 16), torch.rand(b, 1)) for b in (1, 4, 8)]
    samples = [normalize_sample(r, i) for i, r in enumerate(raw)]
    with torch.no_grad():
        outs = [model(*s.args) for s in samples]
    return model, record_spec(model, samples, outs), samples


@pytest.fixture(scope="module")
def single(recorded):
    _, spec, samples = recorded
    return derive_profiles(spec, samples, ProfileMode.SINGLE)


@pytest.fixture(scope="module")
def multi(recorded):
    _, spec, samples = recorded
    return derive_profiles(spec, samples, ProfileMode.SAMPLES_USED)



def make_fake_trt(version="10.9.0", same_cc=True, builder_class=True):
    """A stand-in for the tensorrt module with the enums the config needs (TensorRT 10 names)."""
    levels = ["NONE", "AMPERE_PLUS"] + (["SAME_COMPUTE_CAPABILITY"] if same_cc else [])
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "TACTIC_SHARED_MEMORY"])
    mod.HardwareCompatibilityLevel = enum.Enum("HardwareCompatibilityLevel", levels)
    mod.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    mod.DataType = enum.Enum("DataType", ["FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8",
                                          "FP8", "INT4", "FP4"])
    if builder_class:
        mod.Builder = type("Builder", (), {})
    return mod



class FakeEngine:
    def __init__(self, trt, tensors, profiles):
        self._trt, self._tensors, self._profiles = trt, tensors, profiles
        self.num_io_tensors = len(tensors)
        self.num_optimization_profiles = len(profiles)

    def get_tensor_name(self, index):
        return list(self._tensors)[index]

    def get_tensor_mode(self, name):
        return self._trt.TensorIOMode[self._tensors[name][0]]

    def get_tensor_dtype(self, name):
        return self._trt.DataType[self._tensors[name][1]]

    def get_tensor_shape(self, name):
        return list(self._tensors[name][2])  # trt.Dims is a sequence

    def get_tensor_profile_shape(self, name, profile_index):
        return [list(s) for s in self._profiles[profile_index][name]]

    def is_shape_inference_io(self, name):
        return False




@pytest.fixture
def fake_trt():
    """``fake_trt(version, same_cc=True, builder_class=True)``: a stand-in ``tensorrt`` module."""
    return make_fake_trt


@pytest.fixture
def fake_engine():
    """``fake_engine(trt, tensors, profiles)``: an ``ICudaEngine`` stand-in."""
    return FakeEngine


FAKE_TENSORRT = Path(__file__).resolve().parent / "fake_tensorrt"  # an importable fake ``tensorrt`` package
FAKE_SWITCHES = ("FAKE_TENSORRT_GPU", "FAKE_TENSORRT_FAIL", "FAKE_TENSORRT_OUTPUT_OFFSET")


@pytest.fixture
def fake_tensorrt_installed(monkeypatch):
    """``import tensorrt`` finds the fake package here and in every child process (PYTHONPATH); its
    switches (``FAKE_TENSORRT_*``, see its docstring) start unset. The module is forgotten afterwards."""
    if TRT_MISSING is None:
        pytest.skip("a real TensorRT is installed here")
    for name in FAKE_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.syspath_prepend(str(FAKE_TENSORRT))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(FAKE_TENSORRT), os.environ.get("PYTHONPATH"))
                                                      if p))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    yield monkeypatch
    sys.modules.pop("tensorrt", None)
