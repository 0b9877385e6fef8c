"""The PyTorch fallback artifact served by the Python backend, best format first.

1. ``aoti``: an AOTInductor package compiled from a ``torch.export`` program with the batch and
   dynamic axes left symbolic (fastest; host-ISA or CUDA code, bound to its device kind);
2. ``export``: the ``ExportedProgram`` itself (``.pt2``), run through ``ep.module()``;
3. ``eager``: the user's own model file next to a ``state_dict`` (``torch.load(weights_only=True)``,
   with ``torch.ScriptObject`` allowed for the packed params of a quantized model: ``aitune_eager.load_state_dict``).

Every candidate is compiled and checked against the eager outputs in a fresh child process with a
timeout (``export_child.py`` through ``procs.run_child``): AOTInductor compiles are slow and can
crash, and loading a package in the process that compiled it segfaulted on CUDA. A candidate is
kept only when every output of every reference case is within ``tolerance_for(dtype)``
(``numerics.compare``); the reasons for the formats skipped travel with the result.

The eager reference is computed where and how the artifact runs: on the fallback's device, with
the model's own dtypes (a model built on the CPU is copied to the GPU for a ``cuda`` fallback), so
a check measures the artifact and not the difference between CPU and GPU kernels. The ``eager``
artifact is the reference module itself: it must load and return outputs of the right shapes and
dtypes, but a numeric difference (non-deterministic kernels) is logged, never a refusal.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils import _pytree as pytree

from aitune_triton import numerics, procs
from aitune_triton.export import aoti_crashes
from aitune_triton.errors import CandidateFailed, ModelError, UserError
from aitune_triton.export.diagnostics import append_text, capture_torch_output, child_failure, export_failure
from aitune_triton.export.fallback_artifact import (
    AOTI_FILE,
    EXPORT_FILE,
    FALLBACK_LOG,
    FILES,
    FORMATS,
    SOURCE_FILE,
    STATE_FILE,
    FallbackArtifact,
)
from aitune_triton.export.flat_io import forward_caller
from aitune_triton.export.torch_program import (AxisRanges, batch_of, export_program, first_line, on_device,
                                                resize_axis, resize_batch)
from aitune_triton.numerics import LOOSEN_HINT, Tolerance, ToleranceOverride, tolerance_for
from aitune_triton.spec import AxisKind, IOSpec, Sample, call_with_feed, flatten_outputs, sample_feed
from aitune_triton.profile_set import ProfileSet
from aitune_triton.runtime.aitune_eager import PaddedDetections, import_user_module, load_state_dict

log = logging.getLogger(__name__)


COMPILE_TARGET = "aitune_triton.export.export_child:compile_aoti"
CHECK_TARGET = "aitune_triton.export.export_child:check"
# why a portable build skips AOTInductor
NOT_PORTABLE = ("not portable (--portable): an AOTInductor package is machine code for this host's CPU "
                "instruction set (and GPU), the ExportedProgram runs on any host")


class CandidateCrashed(CandidateFailed):
    """The child checking a candidate was killed by a signal (a crash in native code)."""


# ----------------------------------------------------------------------------- reference cases


def _run_eager(model: torch.nn.Module, spec: IOSpec, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {n: t.detach() for n, t in flatten_outputs(call_with_feed(model, spec, feed))}


def _envelope_feed(feed: dict[str, torch.Tensor], spec: IOSpec, batch: int | None,
                   which: str) -> dict[str, torch.Tensor]:
    """``feed`` with ``batch`` rows and every dynamic non-batch axis at its ``min``/``max`` (the spec
    holds the serving envelope), tiled or cut from the feed's own entries."""
    out = {}
    for name, value in feed.items():
        t = spec.input(name)
        for axis, a in enumerate(t.axes):
            if axis == 0 and t.has_batch:
                if batch is not None:
                    value = resize_batch(value, batch)
            elif a.kind is AxisKind.DYNAMIC:
                value = resize_axis(value, axis, getattr(a, which))
        out[name] = value
    return out


def _outputs_on(outputs: Sequence[Any], device: str) -> bool:
    """Whether every tensor of the given eager outputs lives on ``device`` (so they were computed there)."""
    leaves = [t for out in outputs for _, t in flatten_outputs(out)]
    return bool(leaves) and all(t.device.type == device for t in leaves)


def reference_cases(model: torch.nn.Module, spec: IOSpec, samples: Sequence[Sample], outputs: Sequence[Any] | None,
                    max_batch: int, device: str | None = None, joint_corner: bool = True,
                    ) -> list[tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """The samples with their eager outputs, plus the corners of the serving envelope cut or tiled from
    the largest sample: batch 1 with every dynamic axis at its min and at its max, ``max_batch`` at the
    axes' min and (``joint_corner``: when affordable) at their max. Export's 0/1 specialisation and range
    bugs show up exactly at the ends of the ranges.
    With ``device`` the feeds are moved there and every output is recomputed by ``model`` (which must
    be on it) unless ``outputs`` were computed on that device already."""
    if device is not None:
        outputs = outputs if outputs is not None and _outputs_on(outputs, device) else None
    cases = []
    for i, sample in enumerate(samples):
        feed = sample_feed(spec, sample)
        if device is not None:
            feed = {k: v.to(device) for k, v in feed.items()}
        if spec.batching and max_batch >= 1 and batch_of(feed, spec) > max_batch:
            # Triton never sends more than max_batch_size: check the sample's first rows instead
            feed = {k: v[:max_batch] if spec.input(k).has_batch else v for k, v in feed.items()}
            cases.append(("sample %d cut to batch %d" % (i, max_batch), feed, _run_eager(model, spec, feed)))
        elif outputs is None:
            cases.append(("sample %d" % i, feed, _run_eager(model, spec, feed)))
        else:
            cases.append(("sample %d" % i, feed, dict(flatten_outputs(outputs[i]))))
    batching = spec.batching and max_batch >= 1
    enveloped = any(a.kind is AxisKind.DYNAMIC and a.min < a.max and not (i == 0 and t.has_batch)
                    for t in spec.inputs for i, a in enumerate(t.axes))
    if not batching and not enveloped:
        return cases
    label, big, _ = max(cases, key=lambda c: batch_of(c[1], spec) if spec.batching else 0)
    corners: list[tuple[int | None, str]] = []
    if batching:
        corners.append((1, "min"))
        if enveloped:
            corners.append((1, "max"))
        if max_batch > 1:
            corners.append((max_batch, "min"))
            if enveloped and joint_corner:
                corners.append((max_batch, "max"))
    else:
        corners = [(None, "min"), (None, "max")]
    seen = {tuple((k, tuple(v.shape)) for k, v in c[1].items()) for c in cases}
    for batch, which in corners:
        feed = _envelope_feed(big, spec, batch, which)
        key = tuple((k, tuple(v.shape)) for k, v in feed.items())
        if key in seen:
            continue
        seen.add(key)
        name = "%saxes at their %s (from %s)" % ("batch %d, " % batch if batch else "", which, label)
        try:
            cases.append((name, feed, _run_eager(model, spec, feed)))
        except Exception as exc:  # the model itself cannot take that shape: nothing to compare against
            log.info("eager forward failed at %s, not checking it: %s", name, first_line(exc))
    return cases


def rows_independent(model: torch.nn.Module, spec: IOSpec, cases: list, tolerance: ToleranceOverride | None) -> bool:
    """Whether row 0 of the largest case equals the same row run alone: padding a batch with extra
    rows (to replay a captured CUDA graph) is exact only then."""
    if not spec.batching:
        return False
    _, big, big_out = max(cases, key=lambda c: batch_of(c[1], spec))
    if batch_of(big, spec) < 2:
        return False
    try:
        alone = _run_eager(model, spec, {k: v[:1] for k, v in big.items()})
    except Exception:
        return False
    return all(compare(big_out[t.name][:1], alone[t.name], tolerance_for(t.dtype, tolerance)) is None
               for t in spec.outputs)


def _compared(actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance) -> tuple[numerics.Comparison, str | None]:
    """``numerics.compare`` of a result with eager, and why it fails in this check's words (None:
    it matches). torch dtypes are compared first: numpy has no bfloat16, so ``compare`` sees a
    bfloat16 output as float32."""
    comparison = numerics.compare(actual, expected, tol)
    if tuple(actual.shape) != tuple(expected.shape):
        return comparison, "shape %s, eager %s" % (list(actual.shape), list(expected.shape))
    if actual.dtype != expected.dtype:
        return comparison, "dtype %s, eager %s" % (actual.dtype, expected.dtype)
    if comparison.ok:
        return comparison, None
    if actual.is_floating_point():
        why = "max |err| %.3g > atol %g + rtol %g * |eager|" % (comparison.max_abs, tol.atol, tol.rtol)
        if tol.rel_l2 is not None:
            why += " and relative L2 error %.3g > %g" % (comparison.rel_l2, tol.rel_l2)
        return comparison, why
    return comparison, "%d of %d values differ (exact dtype %s)" % (comparison.bad, comparison.total, actual.dtype)


def compare(actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance) -> str | None:
    """None when ``actual`` matches eager within ``tol`` (exact for integer and bool outputs), else why not."""
    return _compared(actual, expected, tol)[1]


# ----------------------------------------------------------------------------- loading (child side)


def load_runner(version_dir: Path, fmt: str, device: str, spec: IOSpec, max_detections: int = 0) -> Callable[..., Any]:
    """The artifact as a callable taking ``forward``'s arguments. The exported formats take flat
    tensors in spec input order and return a flat tuple (``FlatIO``); the generated model.py
    calls them that way, here they are adapted to ``forward``'s arguments. ``max_detections``: the
    eager module returns one dict per image, padded as the served model.py pads it."""
    version_dir = Path(version_dir)
    dev = torch.device(device)
    if fmt == "aoti":
        index = dev.index if dev.index is not None else (0 if dev.type == "cuda" else -1)
        return forward_caller(torch._inductor.aoti_load_package(str(version_dir / AOTI_FILE), device_index=index),
                              spec)
    if fmt == "export":
        return forward_caller(torch.export.load(str(version_dir / EXPORT_FILE)).module().to(dev), spec)
    if fmt == "eager":
        model = import_user_module(version_dir / SOURCE_FILE).get_model()
        if max_detections:
            model = PaddedDetections(model, max_detections)
        model.load_state_dict(load_state_dict(version_dir / STATE_FILE, dev))
        return model.to(dev).eval()
    raise ValueError("unknown fallback format %r" % fmt)


def check_runner(runner: Callable[..., Any], spec: IOSpec, cases: list, device: str,
                 tolerance: ToleranceOverride | None = None, refuse_mismatch: bool = True) -> dict[str, float]:
    """Run every case; raise CandidateFailed on the first output outside tolerance (with
    ``refuse_mismatch`` False, as for the eager artifact, a numeric miss is only logged: shapes,
    dtypes and the output count must still match)."""
    errors = {t.name: 0.0 for t in spec.outputs}
    for label, feed, expected in cases:
        args, kwargs = [], {}
        for t in spec.inputs:
            kind, _, key = t.binding.partition(":")
            value = feed[t.name].to(device)
            if kind == "arg":
                args.append(value)
            else:
                kwargs[key] = value
        try:
            with torch.inference_mode():
                leaves = pytree.tree_leaves(runner(*args, **kwargs))
        except Exception as exc:
            raise CandidateFailed("forward failed on %s: %s" % (label, first_line(exc))) from exc
        if len(leaves) != len(spec.outputs):
            raise CandidateFailed("%d outputs on %s, eager gave %d" % (len(leaves), label, len(spec.outputs)))
        for t, got in zip(spec.outputs, leaves, strict=True):
            comparison, why = _compared(got, expected[t.name], tolerance_for(t.dtype, tolerance))
            numeric_only = tuple(got.shape) == tuple(expected[t.name].shape) and got.dtype == expected[t.name].dtype
            if why and (refuse_mismatch or not numeric_only):
                raise CandidateFailed("output %r differs from eager on %s: %s" % (t.name, label, why))
            if why:
                log.warning("output %r differs from the eager reference on %s (kept: it is the same module): %s",
                            t.name, label, why)
            errors[t.name] = max(errors[t.name], comparison.max_abs)
    return errors


# ----------------------------------------------------------------------------- child processes


def _child_reason(what: str, failure: procs.ChildFailed) -> str:
    """One plain line for a compile or check child that returned nothing."""
    if failure.outcome is procs.ChildOutcome.TIMEOUT:
        return "%s timed out after %.0f s" % (what, failure.timeout_s or 0)
    if failure.outcome is procs.ChildOutcome.SIGNAL:  # faulthandler printed the stack, innermost first
        frames = [line.strip() for line in failure.output.splitlines() if line.strip().startswith("File ")]
        return "%s crashed (signal %s%s)" % (what, failure.signal_name,
                                             ", innermost frame: " + frames[0] if frames else "")
    plain = child_failure(failure.output)
    if plain:
        return "%s failed: %s" % (what, plain)
    if isinstance(failure.exception, CandidateFailed):
        reason = str(failure.exception)
    elif failure.outcome is procs.ChildOutcome.RAISED:
        lines = failure.error_message.strip().splitlines()
        reason = "%s %s: %s" % (what, failure.error_type.rsplit(".", 1)[-1], lines[0] if lines else "")
    else:
        tail = failure.tail(1)
        reason = "%s failed: %s" % (what, tail[0] if tail else "no output")
    return reason.replace(" Please check the warnings above.", "")


@dataclass(frozen=True)
class CompileRequest:
    """For ``export_child.compile_aoti``: compile the saved ``ExportedProgram`` at ``program_path``
    into the AOTInductor package at ``package_path``."""

    program_path: Path
    package_path: Path


@dataclass(frozen=True)
class CheckRequest:
    """For ``export_child.check``: load the ``format`` artifact in ``version_dir`` on ``device`` and
    compare it with the eager outputs saved in ``cases_path`` (labels, inputs and outputs)."""

    spec: IOSpec
    cases_path: Path
    version_dir: Path
    format: str
    device: str
    tolerance: ToleranceOverride | None
    max_detections: int = 0
    refuse_mismatch: bool = True  # False for eager: the reference module itself is never refused on numbers


def _run_child(target: str, request: CompileRequest | CheckRequest, job: "_Job", what: str) -> Any:
    """Run one child (``export_child``); its whole output is appended to the fallback log, and a
    failure becomes ``CandidateFailed`` with one line."""
    child_log = job.work / ("%s.log" % re.sub(r"\W+", "_", what))
    try:
        value = procs.run_child(target, request, log_path=child_log, timeout_s=job.timeout_s,
                                keep_dir=job.log_path.parent)
    except procs.ChildFailed as failure:
        status = "timed out" if failure.outcome is procs.ChildOutcome.TIMEOUT else "exit %s" % failure.returncode
        rerun = "\nrerun it in the foreground: %s\n" % failure.rerun if failure.rerun else ""
        append_text(job.log_path, "%s (%s)" % (what, status), failure.output + rerun)
        crashed = failure.outcome is procs.ChildOutcome.SIGNAL
        raise (CandidateCrashed if crashed else CandidateFailed)(_child_reason(what, failure)) from None
    append_text(job.log_path, "%s (exit 0)" % what, child_log.read_text(errors="replace"))
    return value


# ----------------------------------------------------------------------------- the entry point


@dataclass(frozen=True)
class _Job:
    spec: IOSpec
    cases_path: Path
    version_dir: Path
    work: Path
    device: str
    tolerance: ToleranceOverride | None
    timeout_s: float
    log_path: Path
    max_detections: int = 0


def _check(job: _Job, fmt: str) -> dict[str, float]:
    request = CheckRequest(job.spec, job.cases_path, job.version_dir, fmt, job.device, job.tolerance,
                           job.max_detections, refuse_mismatch=fmt != "eager")
    errors: dict[str, float] = _run_child(CHECK_TARGET, request, job, "%s check" % fmt)
    return errors


def _remove(version_dir: Path, fmt: str) -> None:
    for name in FILES[fmt]:
        (version_dir / name).unlink(missing_ok=True)


def _remembered_crash(device: str) -> str | None:
    """Why AOTInductor is skipped here: its load crashed on this machine before (None: it did not)."""
    crash = aoti_crashes.lookup(aoti_crashes.HostKey.here(device))
    return crash.skip_reason(aoti_crashes.cache_path()) if crash else None


def _cpu_state(model: torch.nn.Module) -> dict[str, Any]:
    """``model.state_dict()`` on the CPU. Quantized modules keep packed params, dtypes and tuples
    beside the tensors; the dict itself is kept (its ``_metadata`` holds the module versions that
    quantized modules' loaders read)."""
    state = model.state_dict()
    for key, value in state.items():
        state[key] = pytree.tree_map_only(torch.Tensor, lambda t: t.detach().cpu(), value)
    return state


def build_fallback(source_path: Path, model: torch.nn.Module, spec: IOSpec, samples: Sequence[Sample],
                   outputs: Sequence[Any], profiles: ProfileSet | None, version_dir: Path, device: str = "cpu",
                   preferred: str = "auto", timeout_s: float = 600, tolerance: ToleranceOverride | None = None,
                   log_path: Path | None = None, portable: bool = False,
                   retry_crashed: bool | None = None, joint_corner: bool = True) -> FallbackArtifact:
    """Write the best fallback artifact that matches eager into ``version_dir`` and describe it.

    ``preferred`` forces one format ("aoti", "export", "eager"); "auto" tries them best first.
    ``portable`` leaves out AOTInductor (machine code for this host), so the artifact loads on any
    host. An AOTInductor load that crashed on this machine before (``aoti_crashes``) is skipped
    without compiling unless ``retry_crashed`` (default: when "aoti" is forced); a crash of the check
    is remembered, a retried load that works is forgotten.
    ``timeout_s`` bounds each child process (the compile, each check). ``tolerance`` overrides the
    float tolerances of ``tolerance_for``. torch's output (export warnings, the children's output,
    tracebacks) is appended to ``log_path`` (default ``version_dir/../logs/fallback.log``), the
    reasons in ``skipped`` are one plain line each. Raises ModelError when no candidate (or the
    forced one) passes, with every reason and a copy of the log that outlives the model directory.
    """
    if preferred not in ("auto",) + FORMATS:
        raise UserError("fallback format must be one of auto, %s; got %r" % (", ".join(FORMATS), preferred))
    if device not in ("cpu", "cuda"):
        raise UserError("fallback device must be 'cpu' or 'cuda', got %r" % device)
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but torch sees no CUDA device here; generate on a GPU machine "
                        "or use --device cpu")
    if portable and preferred == "aoti":
        raise UserError("--portable and --fallback-format aoti contradict: an AOTInductor package is machine code "
                        "for the host that compiles it; use --fallback-format export or auto")
    retry_crashed = preferred == "aoti" if retry_crashed is None else retry_crashed
    version_dir = Path(version_dir)
    version_dir.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_path) if log_path else version_dir.parent / FALLBACK_LOG
    append_text(log_path, "fallback build (format %s, device %s)" % (preferred, device), str(version_dir))
    max_batch = profiles.max_batch_size if profiles else spec.max_sample_batch
    model = on_device(model, device)  # the reference runs where the artifact will (a copy when moved)
    cases = reference_cases(model, spec, samples, outputs, max_batch, device, joint_corner)
    independent = rows_independent(model, spec, cases, tolerance)
    wanted: tuple[str, ...] = FORMATS if preferred == "auto" else (preferred,)
    skipped = [(f, "not requested (fallback format %r)" % preferred) for f in FORMATS[:FORMATS.index(wanted[0])]]
    if portable and "aoti" in wanted:
        wanted = tuple(f for f in wanted if f != "aoti")
        skipped.append(("aoti", NOT_PORTABLE))
    crashed_before = _remembered_crash(device) if "aoti" in wanted and not retry_crashed else None
    if crashed_before:
        wanted = tuple(f for f in wanted if f != "aoti")
        skipped.append(("aoti", crashed_before))
        log.info("AOTInductor skipped: %s", crashed_before)
    eager_ranges: AxisRanges = {t.name: tuple((1, max(max_batch, 1)) if (i == 0 and t.has_batch)
                                              else (a.max, a.max) if a.kind is AxisKind.STATIC else (a.min, a.max)
                                              for i, a in enumerate(t.axes)) for t in spec.inputs}
    with tempfile.TemporaryDirectory(prefix="aitune-fallback-") as tmp:
        work = Path(tmp)
        cases_path = work / "cases.pt"
        torch.save({"labels": [c[0] for c in cases], "inputs": [{k: v.cpu() for k, v in c[1].items()} for c in cases],
                    "outputs": [{k: v.cpu() for k, v in c[2].items()} for c in cases]}, cases_path)
        max_detections = model.max_detections if isinstance(model, PaddedDetections) else 0
        job = _Job(spec, cases_path, version_dir, work, device, tolerance, timeout_s, log_path, max_detections)
        ranges: AxisRanges = {}
        export_error = None
        if {"aoti", "export"} & set(wanted):
            try:
                with capture_torch_output(log_path):
                    program, ranges = export_program(model, spec, samples, profiles, device)
                    torch.export.save(program, work / EXPORT_FILE)
            except Exception as exc:
                append_text(log_path, "torch.export failed", traceback.format_exc())
                export_error = "torch.export failed: %s" % export_failure(exc, [t.name for t in spec.inputs])
                log.info("%s", export_error)
        for fmt in wanted:
            checking = False  # a crash while checking (loading) a compiled candidate, not while compiling it
            try:
                if fmt in ("aoti", "export") and export_error:
                    raise CandidateFailed(export_error)
                if fmt == "aoti":
                    _run_child(COMPILE_TARGET, CompileRequest(work / EXPORT_FILE, version_dir / AOTI_FILE), job,
                               "AOTInductor compile")
                elif fmt == "export":
                    shutil.copyfile(work / EXPORT_FILE, version_dir / EXPORT_FILE)
                else:
                    shutil.copyfile(source_path, version_dir / SOURCE_FILE)
                    torch.save(_cpu_state(model), version_dir / STATE_FILE)
                checking = True
                errors = _check(job, fmt)
                if fmt == "aoti" and retry_crashed and aoti_crashes.forget(aoti_crashes.HostKey.here(device)):
                    log.info("AOTInductor loads on this machine now: its remembered crash is forgotten")
            except CandidateFailed as exc:
                if fmt == "aoti" and checking and isinstance(exc, CandidateCrashed):
                    where = aoti_crashes.remember(aoti_crashes.HostKey.here(device), str(exc))
                    exc = CandidateCrashed("%s; remembered in %s: the next generate here skips the AOTInductor "
                                           "compile (retry with `%s`)" % (exc, where, aoti_crashes.RETRY_HINT))
                _remove(version_dir, fmt)
                skipped.append((fmt, str(exc)))
                log.info("fallback %s rejected: %s", fmt, exc)
                continue
            artifact = FallbackArtifact(fmt, device, FILES[fmt], tuple(skipped), errors,
                                        eager_ranges if fmt == "eager" else ranges, independent, fmt != "eager",
                                        max_detections)
            log.info("fallback: %s on %s, max |err| vs eager %s", fmt, device,
                     ", ".join("%s %.3g" % kv for kv in errors.items()))
            return artifact
    kept = Path(tempfile.mkstemp(prefix="aitune-fallback-", suffix=".log")[1])  # the model dir is not kept
    shutil.copyfile(log_path, kept)
    hint = "; " + LOOSEN_HINT if any(" differs from eager " in reason for _, reason in skipped) else ""
    if preferred != "auto":
        raise ModelError("fallback format %r failed: %s%s" % (preferred, skipped[-1][1], hint), log_path=str(kept))
    raise ModelError("no PyTorch fallback matched eager: %s%s" % (skipped_summary(skipped), hint), log_path=str(kept))


def skipped_summary(skipped: Sequence[tuple[str, str]]) -> str:
    """``aoti, export skipped: REASON; ...``: formats that failed for one reason share one clause."""
    by_reason: dict[str, list[str]] = {}
    for fmt, reason in skipped:
        by_reason.setdefault(reason, []).append(fmt)
    return "; ".join("%s skipped: %s" % (", ".join(fmts), reason) for reason, fmts in by_reason.items())

