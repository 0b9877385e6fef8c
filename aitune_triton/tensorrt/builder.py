"""Build a TensorRT plan in a child process, check it, and report its failures as one line.

The build itself (``build_child.build``: Polygraphy's ``NetworkFromOnnxPath`` ->
``CreateConfig`` -> ``EngineBytesFromNetwork``, then the plan read back and, when asked, run on the
samples against eager PyTorch by ``plan_check``) runs through ``procs.run_child``: a segfault, an
abort or a hang inside TensorRT ends that process, not the CLI, and comes back as one
``ModelError`` line naming the stage (parse / build / check) and the child's log. The settings are
in ``settings.py``, the trtexec equivalent in ``trtexec.py``, the plan read-back in ``plan.py``.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from aitune_triton import procs
from aitune_triton.errors import AituneError, ModelError, UserError
from aitune_triton.tensorrt.availability import TensorRTUnavailable
from aitune_triton.tensorrt.build_child import STAGE_MARK, BuildRequest, PlanStage, stage_failed
from aitune_triton.tensorrt.config import TensorRTBackendConfig
from aitune_triton.tensorrt.plan import PlanArtifact
from aitune_triton.profile_set import ProfileSet
from aitune_triton.tensorrt.plan_check import PlanCheckRequest

log = logging.getLogger(__name__)

BUILD_TARGET = "aitune_triton.tensorrt.build_child:build"
_PROGRESS_EVERY_S = 15.0


def _child_env(device: str) -> dict[str, str]:
    """The child's environment: never Polygraphy's auto-install, and ``cuda:N`` mapped onto
    CUDA_VISIBLE_DEVICES so TensorRT builds on GPU N."""
    if device == "cpu":
        raise UserError("TensorRT builds need a GPU; TensorRTBackendConfig.device is 'cpu'")
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not match:
        raise UserError("TensorRTBackendConfig.device must be 'cuda' or 'cuda:<index>', got %r" % device)
    env = procs.child_env(unset=("POLYGRAPHY_AUTOINSTALL_DEPS",))
    if match.group(1) is not None:
        index = int(match.group(1))
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        if visible:
            if index >= len(visible):
                raise UserError("device %s: CUDA_VISIBLE_DEVICES=%s has only %d device(s)"
                                % (device, env["CUDA_VISIBLE_DEVICES"], len(visible)))
            env["CUDA_VISIBLE_DEVICES"] = visible[index].strip()
        else:
            env["CUDA_VISIBLE_DEVICES"] = str(index)
    return env


def _tail_error(lines: list[str]) -> str | None:
    """The last error TensorRT printed (``[E]`` lines through Polygraphy's logger), else Polygraphy's
    own (``[!]``), else an ``Error`` line."""
    for pattern in (r"\[E\]", r"\[!\]", r"(?i)error"):
        for line in reversed(lines):
            if re.search(pattern, line) and line.strip():
                return re.sub(r"\s+", " ", line).strip()[:400]
    return None


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _run(request: BuildRequest, log_path: Path, timeout_s: float, progress: Callable[[str], None] | None,
         label: str, env: dict[str, str]) -> PlanArtifact:
    """The child run, showing elapsed time: through ``progress`` every 15 s, else a console spinner."""
    if progress is not None:
        report = progress
        report("%s (timeout %.0f s)" % (label, timeout_s))
        next_report = [_PROGRESS_EVERY_S]

        def tick(elapsed: float) -> None:
            if elapsed >= next_report[0]:
                report("%s: %.0f s" % (label, elapsed))
                next_report[0] += _PROGRESS_EVERY_S

        return procs.run_child(BUILD_TARGET, request, log_path=log_path, timeout_s=timeout_s, env=env, tick=tick)
    from rich.console import Console
    from rich.text import Text

    from aitune_triton.progress import plain_updates

    with Console(stderr=True).status(Text(label)) as status:
        update = plain_updates(status)  # the label names the user's model
        return procs.run_child(BUILD_TARGET, request, log_path=log_path, timeout_s=timeout_s, env=env,
                               tick=lambda elapsed: update("%s: %.0f s" % (label, elapsed)))


def _stage_reached(lines: list[str]) -> PlanStage:
    """The last stage the child announced in its log (``parse`` when it announced none)."""
    for line in reversed(lines):
        if line.startswith(STAGE_MARK):
            try:
                return PlanStage(line[len(STAGE_MARK):].strip())
            except ValueError:
                break
    return PlanStage.PARSE


def _build_error(failure: procs.ChildFailed) -> AituneError:
    """The one-line error for a build child that returned no plan."""
    log_path = str(failure.log_path)
    lines = failure.output.splitlines()
    detail = _tail_error(failure.tail(200))
    last = "; last error: %s" % detail if detail else ""
    stage = _stage_reached(lines)
    if failure.outcome is procs.ChildOutcome.TIMEOUT:
        return ModelError(stage_failed(stage, "timed out after %.0f s and was stopped; raise build_timeout_s or lower "
                                              "optimization_level" % (failure.timeout_s or 0)), log_path=log_path)
    if failure.outcome is procs.ChildOutcome.SIGNAL:
        return ModelError(stage_failed(stage, "TensorRT crashed with %s%s" % (failure.signal_name, last)),
                          log_path=log_path)
    if failure.outcome is procs.ChildOutcome.EXITED:
        return ModelError(stage_failed(stage, "the process exited with code %d without a result%s"
                                              % (failure.returncode or 0, last)), log_path=log_path)
    if isinstance(failure.exception, TensorRTUnavailable):
        return TensorRTUnavailable(_one_line(str(failure.exception)))
    message = _one_line(failure.error_message or "unknown error")
    if not isinstance(failure.exception, AituneError):  # a bug in the child: say what it was
        message = stage_failed(stage, "%s: %s" % (failure.error_type.rsplit(".", 1)[-1], message))
    said = re.sub(r"^\[[E!]\]\s*", "", detail or "")
    if said and said not in message and message not in said:  # not the child's own message again
        message += " (TensorRT: %s)" % detail
    return ModelError(message, log_path=log_path)


def build_plan(onnx_path: Path | str, plan_path: Path | str, trt_config: TensorRTBackendConfig,
               profile_set: ProfileSet, timeout_s: float | None = None,
               progress: Callable[[str], None] | None = None, check: PlanCheckRequest | None = None,
               log_path: Path | None = None) -> PlanArtifact:
    """Build the plan in a child process and return it with its I/O, stamp and (with ``check``) its
    check against the eager outputs; a plan that fails the check is not written.

    Failures come back as one-line ``ModelError``s naming the stage: TensorRT missing, the parser's
    or builder's own error, the check's mismatch, a crash (signal) or the timeout (``timeout_s``, else
    ``trt_config.build_timeout_s``). The child's full log (``log_path``, else a temporary file) is
    kept on failure and named in the error; a temporary one is removed after a success.
    """
    onnx_path, plan_path = Path(onnx_path).resolve(), Path(plan_path).resolve()
    if not onnx_path.is_file():
        raise UserError("no ONNX model at %s; export it first" % onnx_path)
    timeout = float(trt_config.build_timeout_s if timeout_s is None else timeout_s)
    if timeout <= 0:
        raise UserError("the build timeout must be positive, got %r" % timeout)
    env = _child_env(trt_config.device)
    work = Path(tempfile.mkdtemp(prefix="aitune-trt-build-"))
    log_path = Path(log_path) if log_path is not None else work / "build.log"
    log.info("building TensorRT plan %s from %s (%s)", plan_path, onnx_path, trt_config.describe() or "defaults")
    label = "building and checking the TensorRT plan of %s" if check is not None else "building the TensorRT plan of %s"
    try:
        artifact = _run(BuildRequest(onnx_path, plan_path, trt_config, profile_set, check), log_path, timeout,
                        progress, label % plan_path.parent.parent.name, env)
    except procs.ChildFailed as failure:
        error = _build_error(failure)
        if failure.rerun and error.log_path is not None:
            error.details = "rerun the build in the foreground: %s" % failure.rerun
        if error.log_path is None:  # nothing in the log the message does not say
            shutil.rmtree(work, ignore_errors=True)
        raise error from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    log.info("built %s in %.1f s with TensorRT %s", plan_path, artifact.stamp.build_seconds,
             artifact.stamp.tensorrt_version)
    return artifact
