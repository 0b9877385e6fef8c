"""``version_stamp``: a TensorRT plan's build stamp matches the serving container's Triton (a
plan only loads on the TensorRT it was built with, or a newer one of the same major when
version compatible)."""

from __future__ import annotations

import time

from aitune_triton.tensorrt.stamp import describe_stamp, tensorrt_problem
from aitune_triton.triton.manifest import Manifest
from aitune_triton.validate.checks.registry import Check, register
from aitune_triton.validate.result import CheckResult, CheckStatus, finished
from aitune_triton.validate.checks.target import ModelTarget, Session

# The TensorRT each Triton release ships, where two public sources agree (NVIDIA's container
# release notes and Model Navigator's tested versions); other releases are unknown, never guessed.
KNOWN_TRT_FOR_TRITON = {"2.44": "8.6.3", "2.45": "8.6.3", "2.49": "10.3.0", "2.52": "10.6.0", "2.56": "10.9.0",
                        "2.64": "10.14.1"}


def _release(version: str | None) -> str | None:
    parts = str(version or "").split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]) else None


def version_verdict(manifest: Manifest, server_version: str | None) -> tuple[CheckStatus, str]:
    """(status, detail) for a plan's stamp against the serving container's Triton version.

    Reads the stamp ``build-plan`` writes (``tensorrt_version``, ``compute_capability``,
    ``version_compatible``, ``hardware_compatibility_level``; a ``triton_version`` when known). A plan
    only loads on the TensorRT it was built with (or a newer one of the same major when version
    compatible); the Triton release pins that, so the release is compared first, then TensorRT where
    the pairing is known (``tensorrt/stamp.py`` holds the rules). A staged model's quantization is
    reported alongside.
    """
    trt = manifest.tensorrt
    quantized = "; quantization: %s" % trt.quantization.summary() if trt and trt.quantization else ""
    if manifest.backend != "tensorrt":
        return CheckStatus.SKIP, "not a TensorRT plan (%s backend)%s" % (manifest.backend, quantized)
    if trt and not trt.stamp:
        return CheckStatus.SKIP, "no plan built yet (TensorRT model %s)%s" % (trt.status.value, quantized)
    stamp = dict(trt.stamp or {}) if trt else {}
    built_triton = stamp.get("triton_version")
    built_trt = stamp.get("tensorrt_version")
    if not server_version:
        return CheckStatus.SKIP, "the server does not report its version"
    if _release(built_triton):
        if _release(built_triton) != _release(server_version):
            return CheckStatus.FAIL, ("plan built for Triton %s but the server is %s: rebuild the plan in the "
                                      "matching container" % (built_triton, server_version))
        return CheckStatus.PASS, "plan built for Triton %s, server %s%s" % (built_triton, server_version, quantized)
    expected = KNOWN_TRT_FOR_TRITON.get(_release(server_version) or "")
    if built_trt and expected:
        problem = tensorrt_problem(built_trt, bool(stamp.get("version_compatible")), expected)
        where = "Triton %s (TensorRT %s)" % (server_version, expected)
        if problem:
            return CheckStatus.FAIL, ("%s: rebuild the plan there (aitune-triton build-plan inside the Triton %s "
                                      "container)" % (problem.format(where=where), server_version))
        loads = ("version-compatible plan built with TensorRT %s, Triton %s ships %s (same major; start the server "
                 "with --backend-config=tensorrt,version-compatible=true)" % (built_trt, server_version, expected)
                 if stamp.get("version_compatible") and not str(built_trt).startswith(expected)
                 else "plan built with TensorRT %s, Triton %s ships %s" % (built_trt, server_version, expected))
        return CheckStatus.PASS, "%s; stamp: %s%s" % (loads, describe_stamp(stamp), quantized)
    return CheckStatus.SKIP, "no usable version stamp (TensorRT %s) for Triton %s" % (built_trt or "unknown",
                                                                                     server_version)


def check_version_stamp(target: ModelTarget, session: Session) -> CheckResult:
    t0 = time.monotonic()
    if target.manifest.backend != "tensorrt":
        return finished("version_stamp", *version_verdict(target.manifest, None), t0)
    server = session.http.get_server_metadata().get("version")
    return finished("version_stamp", *version_verdict(target.manifest, server), t0)


register(Check("version_stamp", 80, lambda ctx: check_version_stamp(ctx.target, ctx.session)))
