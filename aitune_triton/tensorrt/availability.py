"""Whether this Python environment can build TensorRT plans, and why not.

``import_tensorrt`` is the one import of TensorRT as a builder: the lean and dispatch runtimes,
a runtime-only build, the type stubs alone or a TensorRT older than 10 are refused with a
``TensorRTUnavailable`` that says what is missing and how to get it. ``build_status`` adds the
second condition of a build: TensorRT can create a builder, which needs a usable CUDA GPU.
``generate`` builds the plan only when ``build_status`` says so, and ``doctor`` shows the same answer.
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
    installed: bool = False  # ``import tensorrt`` gives a real TensorRT (it may still be unusable here)


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
        return TensorRTStatus(False, version, str(exc), installed=version is not None)
    except Exception as exc:  # a broken install must not take the caller down
        return TensorRTStatus(False, None, "import tensorrt crashed: %s: %s" % (type(exc).__name__, exc))
    return TensorRTStatus(True, trt.__version__, "TensorRT %s builder available" % trt.__version__, installed=True)


def _builder_problem() -> str | None:
    """Why TensorRT cannot create a builder in this process (None: it can). Without a usable CUDA
    GPU TensorRT logs a CUDA initialization failure and the ``Builder`` constructor fails."""
    import tensorrt as trt

    errors: list[str] = []

    class Capture(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                errors.append(" ".join(msg.split()))

    try:
        builder = trt.Builder(Capture())
    except Exception as exc:  # pybind11 raises TypeError when TensorRT's factory returns null
        return errors[-1] if errors else "%s: %s" % (type(exc).__name__, exc)
    del builder
    return None


def build_status() -> TensorRTStatus:
    """Whether ``generate`` can build a plan here: TensorRT imports as a builder *and* creates one
    (that needs a CUDA GPU it can use). Never raises; ``reason`` says what is missing."""
    status = tensorrt_status()
    if not status.available:
        return status
    try:
        problem = _builder_problem()
    except Exception as exc:  # a broken install must not take the caller down
        problem = "%s: %s" % (type(exc).__name__, exc)
    if problem:
        return TensorRTStatus(False, status.version, "TensorRT %s is installed but cannot create a builder here: no "
                              "usable CUDA GPU? (%s)" % (status.version, problem), installed=True)
    return TensorRTStatus(True, status.version, "TensorRT %s builder and a CUDA GPU available" % status.version,
                          installed=True)

