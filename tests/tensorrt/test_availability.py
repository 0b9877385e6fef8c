"""Whether TensorRT can build here, against fake tensorrt modules and the real environment."""

import sys

import pytest

from aitune_triton.tensorrt.availability import tensorrt_status


@pytest.mark.parametrize("version, builder_class, available, words", [
    ("10.3.0", True, True, "10.3.0"),
    ("8.6.1", True, False, "too old"),
    ("10.3.0", False, False, "no Builder"),
])
def test_tensorrt_status_with_fakes(monkeypatch, fake_trt, version, builder_class, available, words):
    fake = fake_trt(version, builder_class=builder_class)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    status = tensorrt_status()
    assert status.available is available and status.version == fake.__version__ and words in status.reason


@pytest.mark.usefixtures("no_tensorrt")
def test_tensorrt_status_unavailable_here():
    status = tensorrt_status()
    assert not status.available and status.version is None
    assert "TensorRT is not installed" in status.reason and "aitune-triton[tensorrt]" in status.reason


