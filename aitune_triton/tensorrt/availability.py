"""Whether this Python environment can build TensorRT plans, and why not.

``import_tensorrt`` is the one import of TensorRT as a builder: the lean and dispatch runtimes,
a runtime-only build, the type stubs alone or a TensorRT older than 10 are refused with a
``TensorRTUnavailable`` that says what is missing and how to get it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aitune_triton.errors import ModelError

MIN_TENSORRT = (10, 0)
INSTALL_HINT = "pip install 'aitune-triton[tensorrt]' on a machine with an NVIDIA GPU"


@dataclass(frozen=True)
class TensorRTStatus:
    """Whether the full TensorRT builder can be used in this Python environment, and why not."""

    available: bool
    version: str | None
    reason: str


class TensorRTUnavailable(ModelError):
    """No usable TensorRT builder in this Python environment (not installed, runtime-only, too old)."""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])

def import_tensorrt() -> Any:
    """``import tensorrt`` as a builder, or a ``ModelError`` that says what is missing and how to get it.

    The lean and dispatch runtimes on PyPI install as ``tensorrt_lean`` / ``tensorrt_dispatch`` and
    cannot build; a ``tensorrt`` module without ``Builder`` (a stub, a runtime-only build) is refused too.
    """
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or an OSError from a missing libnvinfer
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TensorRTUnavailable("TensorRT is not installed in this Python environment (import tensorrt failed: %s); "
                                  "%s, or run the generated build_plan.sh inside a TensorRT/Triton container"
                                  % (reason, INSTALL_HINT)) from None
    if getattr(trt, "__file__", None) is None and hasattr(trt, "__path__"):
        # a namespace package: only the type stubs (tensorrt-stubs, a dev tool) are installed
        raise TensorRTUnavailable("TensorRT is not installed in this Python environment (only its type stubs are); "
                                  "%s, or run the generated build_plan.sh inside a TensorRT/Triton container"
                                  % INSTALL_HINT)
    version = getattr(trt, "__version__", "unknown")
    if not hasattr(trt, "Builder"):
        raise TensorRTUnavailable("the installed tensorrt %s has no Builder (a runtime-only package); %s"
                                  % (version, INSTALL_HINT))
    if _version_tuple(version) < MIN_TENSORRT:
        raise TensorRTUnavailable("TensorRT %s is too old: aitune-triton needs TensorRT >= %d.%d (the TensorRT 10 API)"
                                  % ((version,) + MIN_TENSORRT))
    return trt


def tensorrt_status() -> TensorRTStatus:
    """Check TensorRT without ever raising (used by ``generate`` and ``doctor`` to choose a path)."""
    try:
        trt = import_tensorrt()
    except TensorRTUnavailable as exc:
        version = None
        try:
            import tensorrt as maybe
            version = getattr(maybe, "__version__", None)
        except Exception:
            pass
        return TensorRTStatus(False, version, str(exc))
    except Exception as exc:  # a broken install must not take the caller down
        return TensorRTStatus(False, None, "import tensorrt crashed: %s: %s" % (type(exc).__name__, exc))
    return TensorRTStatus(True, trt.__version__, "TensorRT %s builder available" % trt.__version__)

