"""A plan's build stamp against the serving Triton's version."""

from __future__ import annotations

import dataclasses

from aitune_triton.tensorrt.section import TensorRTSection
from aitune_triton.triton.manifest import Manifest
from aitune_triton.validate.checks import version_stamp as vs
from aitune_triton.validate.checks.target import ModelTarget
from aitune_triton.validate.result import CheckStatus

PASS, FAIL, SKIP = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.SKIP


def _with_trt(target: ModelTarget, tensorrt: dict) -> Manifest:
    return dataclasses.replace(target.manifest, backend="tensorrt", tensorrt=TensorRTSection.from_dict(tensorrt))


def test_version_verdicts(affine):
    assert vs.version_verdict(affine.manifest, "2.51.0")[0] == SKIP
    built = _with_trt(affine, {"status": "built", "stamp": {"triton_version": "2.51.0", "tensorrt_version": "10.5"}})
    assert vs.version_verdict(built, "2.51.0")[0] == PASS
    status, detail = vs.version_verdict(built, "2.49.0")
    assert status == FAIL and "built for Triton 2.51.0 but the server is 2.49.0" in detail
    trt_only = _with_trt(affine, {"status": "built", "stamp": {"tensorrt_version": "10.3.0.26"}})
    assert vs.version_verdict(trt_only, "2.49.0")[0] == PASS
    assert vs.version_verdict(trt_only, "2.52.0")[0] == FAIL
    assert vs.version_verdict(trt_only, "2.51.0")[0] == SKIP  # no corroborated pairing for 2.51
    assert vs.version_verdict(built, None)[0] == SKIP
    # as build-plan writes it: the stamp has the TensorRT version and whether the plan is version compatible
    stamp = {"tensorrt_version": "10.6.0.26", "version_compatible": True, "compute_capability": "9.0"}
    compatible = _with_trt(affine, {"status": "built", "stamp": stamp})
    assert vs.version_verdict(compatible, "2.56.0")[0] == PASS
    assert vs.version_verdict(compatible, "2.44.0")[0] == FAIL
