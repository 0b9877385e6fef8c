"""The PyTorch fallback artifact served by the Python backend, best format first.

1. ``aoti``: an AOTInductor package compiled from a ``torch.export`` program with the batch and
   dynamic axes left symbolic (fastest; host-ISA or CUDA code, bound to its device kind);
2. ``export``: the ``ExportedProgram`` itself (``.pt2``), run through ``ep.module()``;
3. ``eager``: the user's own model file next to a ``state_dict`` (``torch.load(weights_only=True)``).

Every candidate is compiled and checked against the eager outputs in a fresh child process with a
timeout (``export_child.py`` through ``procs.run_child``): AOTInductor compiles are slow and can
crash, and loading a package in the process that compiled it segfaulted on CUDA. A candidate is
kept only when every output of every reference case is within ``tolerance_for(dtype)``
(``numerics.compare``); the reasons for the formats skipped travel with the result.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import re
import shutil
import tempfile
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils import _pytree as pytree

from aitune_triton import numerics, procs
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
from aitune_triton.export.flat_io import flat_inputs, flat_model, forward_caller
from aitune_triton.numerics import Tolerance, tolerance_for
from aitune_triton.spec import AxisKind, IOSpec, Sample, call_with_feed, flatten_outputs, sample_feed
from aitune_triton.tensorrt.profile_set import ProfileSet

log = logging.getLogger(__name__)

__all__ = ["FALLBACK_LOG", "FallbackArtifact", "build_fallback", "check_runner", "compare", "load_runner",
           "skipped_summary"]

COMPILE_TARGET = "aitune_triton.export.export_child:compile_aoti"
CHECK_TARGET = "aitune_triton.export.export_child:check"


# ----------------------------------------------------------------------------- reference cases


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, text[0] if text else "")


def _export_reason(exc: BaseException) -> str:
    """torch.export's first line rarely says why ("Constraints violated (x)!"): keep the few lines
    after it too (the violated guard, the suggested fix), minus the boilerplate."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(("For more information", "The error above occurred"))][:4]
    return ("%s: %s" % (type(exc).__name__, " | ".join(keep)))[:600]


def _batch_of(feed: dict[str, torch.Tensor], spec: IOSpec) -> int:
    return next(feed[t.name].shape[0] for t in spec.inputs if t.has_batch)


def _run_eager(model: torch.nn.Module, spec: IOSpec, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {n: t.detach() for n, t in flatten_outputs(call_with_feed(model, spec, feed))}


def reference_cases(model: torch.nn.Module, spec: IOSpec, samples: Sequence[Sample], outputs: Sequence[Any],
                    max_batch: int) -> list[tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """The samples with their eager outputs, plus batch 1 and ``max_batch`` cut from the largest sample:
    export's 0/1 specialisation and range bugs show up exactly at the ends of the batch range."""
    cases = []
    for i, (sample, out) in enumerate(zip(samples, outputs, strict=True)):
        feed = sample_feed(spec, sample)
        if spec.batching and max_batch >= 1 and _batch_of(feed, spec) > max_batch:
            # Triton never sends more than max_batch_size: check the sample's first rows instead
            feed = {k: v[:max_batch] if spec.input(k).has_batch else v for k, v in feed.items()}
            cases.append(("sample %d cut to batch %d" % (i, max_batch), feed, _run_eager(model, spec, feed)))
        else:
            cases.append(("sample %d" % i, feed, dict(flatten_outputs(out))))
    if not spec.batching or max_batch < 1:
        return cases
    label, big, _ = max(cases, key=lambda c: _batch_of(c[1], spec))
    size = _batch_of(big, spec)
    extra = [("batch 1 (from %s)" % label, 1)]
    if max_batch > size:
        extra.append(("batch %d (from %s)" % (max_batch, label), max_batch))
    for name, batch in extra:
        feed = {k: _resize_batch(v, batch) if spec.input(k).has_batch else v for k, v in big.items()}
        try:
            cases.append((name, feed, _run_eager(model, spec, feed)))
        except Exception as exc:  # the model itself cannot take that batch: nothing to compare against
            log.warning("eager forward failed at %s, not checking it: %s", name, first_line(exc))
    return cases


def rows_independent(model: torch.nn.Module, spec: IOSpec, cases: list, tolerance: Tolerance | None) -> bool:
    """Whether row 0 of the largest case equals the same row run alone: padding a batch with extra
    rows (to replay a captured CUDA graph) is exact only then."""
    if not spec.batching:
        return False
    _, big, big_out = max(cases, key=lambda c: _batch_of(c[1], spec))
    if _batch_of(big, spec) < 2:
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
        return comparison, "max |err| %.3g > atol %g + rtol %g * |eager|" % (comparison.max_abs, tol.atol, tol.rtol)
    return comparison, "%d of %d values differ (exact dtype %s)" % (comparison.bad, comparison.total, actual.dtype)


def compare(actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance) -> str | None:
    """None when ``actual`` matches eager within ``tol`` (exact for integer and bool outputs), else why not."""
    return _compared(actual, expected, tol)[1]


# ----------------------------------------------------------------------------- export


def _axis_bounds(spec: IOSpec, profiles: ProfileSet | None, name: str, axis: int) -> tuple[int, int]:
    t = spec.input(name)
    lo, hi = t.axes[axis].min, t.axes[axis].max
    shapes = [p.shapes(name) for p in (profiles.profiles if profiles else ()) if name in p.names()]
    if shapes:
        lo, hi = min(s[0][axis] for s in shapes), max(s[2][axis] for s in shapes)
    return lo, hi


def _example(spec: IOSpec, samples: Sequence[Sample], max_batch: int) -> dict[str, torch.Tensor]:
    """A sample to trace with: every symbolic axis >= 2 where possible (torch.export specialises
    sizes 0 and 1), batch grown to 2 by repetition when all samples have batch 1."""
    feeds = [sample_feed(spec, s) for s in samples]

    def score(feed: dict[str, torch.Tensor]) -> tuple:
        sym = [feed[t.name].shape[i] for t in spec.inputs for i, a in enumerate(t.axes)
               if a.kind is not AxisKind.STATIC]
        return (min(sym, default=2) >= 2, _batch_of(feed, spec) if spec.batching else 0)

    feed = max(feeds, key=score)
    if not spec.batching:
        return feed
    size = _batch_of(feed, spec)
    want = max(min(size, max_batch), 2 if max_batch >= 2 else 1)
    return {k: _resize_batch(v, want) if spec.input(k).has_batch else v for k, v in feed.items()}


def _resize_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``batch`` rows: cut, or the rows repeated in order."""
    reps = -(-batch // t.shape[0])
    return t.repeat(reps, *([1] * (t.dim() - 1)))[:batch] if reps > 1 else t[:batch]


def dynamic_dims(spec: IOSpec, samples: Sequence[Sample], profiles: ProfileSet | None, max_batch: int
                 ) -> tuple[dict[str, dict[int, Any]], AxisRanges]:
    """torch.export Dims per input axis, and the range each axis accepts.

    One ``batch`` Dim for all batched inputs. Dynamic axes whose sizes agree in every sample share a
    Dim (an attention mask's sequence axis is the ids' sequence axis); separate Dims would fail with
    "must always be equal". Ranges come from the profiles, else from the samples.
    """
    feeds = [sample_feed(spec, s) for s in samples]
    groups: dict[tuple, list[tuple[str, int]]] = {}
    for t in spec.inputs:
        for i, a in enumerate(t.axes):
            if a.kind is AxisKind.DYNAMIC and not (i == 0 and t.has_batch):
                groups.setdefault(tuple(f[t.name].shape[i] for f in feeds), []).append((t.name, i))
    dims: dict[str, dict[int, Any]] = {t.name: {} for t in spec.inputs}
    ranges = {t.name: [(a.max, a.max) for a in t.axes] for t in spec.inputs}
    if spec.batching and max_batch >= 2:
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        for t in spec.inputs:
            if t.has_batch:
                dims[t.name][0] = batch
    for t in spec.inputs:
        if t.has_batch:
            ranges[t.name][0] = (1, max(max_batch, 1))
    for members in groups.values():
        bounds = [_axis_bounds(spec, profiles, n, i) for n, i in members]
        lo, hi = max(b[0] for b in bounds), min(b[1] for b in bounds)
        if hi <= lo:
            continue
        dim = torch.export.Dim("%s_%d" % (members[0][0], members[0][1]), min=lo, max=hi)
        for n, i in members:
            dims[n][i] = dim
            ranges[n][i] = (lo, hi)
    return dims, {k: tuple(v) for k, v in ranges.items()}


def _on_device(model: torch.nn.Module, device: str) -> torch.nn.Module:
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == device for t in tensors):
        return model
    return copy.deepcopy(model).to(device)


AxisRanges = dict[str, tuple[tuple[int, int | None], ...]]


def export_program(model: torch.nn.Module, spec: IOSpec, samples: Sequence[Sample], profiles: ProfileSet | None,
                   device: str = "cpu") -> tuple[torch.export.ExportedProgram, AxisRanges]:
    """``torch.export.export`` of ``FlatIO(model)`` (flat tensors in and out, in spec order: the
    artifact loads without the user's libraries) with symbolic batch / dynamic axes; returns
    (program, axis ranges)."""
    max_batch = profiles.max_batch_size if profiles else spec.max_sample_batch
    dims, ranges = dynamic_dims(spec, samples, profiles, max_batch)
    feed = {k: v.to(device) for k, v in _example(spec, samples, max_batch).items()}
    target = flat_model(_on_device(model, device).eval(), spec)
    args = flat_inputs(spec, feed)
    shapes = {"inputs": tuple(dims[t.name] or None for t in spec.inputs)}
    try:
        program = torch.export.export(target, args, dynamic_shapes=shapes)
    except Exception as exc:
        if "Constraints violated" not in str(exc):
            raise
        # a guard that holds over the whole range but that the solver cannot prove (seen on CUDA:
        # "min(s, 2*s) == s" from attention) may be deferred to a runtime assert; a real
        # specialisation (s % 2 == 0) may not, so every axis is probed across its range
        log.info("torch.export: %s; retrying with runtime asserts instead of guards", _export_reason(exc))
        program = torch.export.export(target, args, dynamic_shapes=shapes,
                                      prefer_deferred_runtime_asserts_over_guards=True)
        failure = _probe_ranges(program, spec, feed, dims)
        if failure:
            raise RuntimeError("%s; with runtime asserts %s" % (_export_reason(exc), failure)) from exc
    return program, ranges


def _resize_axis(t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """``size`` entries along ``axis``: the tensor's own entries cut or repeated cyclically."""
    return t.index_select(axis, torch.arange(size, device=t.device) % t.shape[axis])


def _probe_ranges(program, spec: IOSpec, feed: dict[str, torch.Tensor], dims: dict[str, dict[int, Any]]) -> str | None:
    """Run the program (in this process: an ExportedProgram is plain PyTorch) at both ends and inside
    each symbolic axis's range; the first size whose runtime assert fails, else None."""
    module = program.module()
    groups: dict[int, tuple[Any, list[tuple[str, int]]]] = {}
    for name, per_axis in dims.items():
        for axis, dim in per_axis.items():
            groups.setdefault(id(dim), (dim, []))[1].append((name, axis))
    for dim, members in groups.values():
        lo, hi = dim.min, dim.max
        for size in sorted({lo, min(lo + 1, hi), (lo + hi) // 2, max(hi - 1, lo), hi}):
            probe = dict(feed)
            for name, axis in members:
                probe[name] = _resize_axis(feed[name], axis, size)
            try:
                with torch.inference_mode():
                    module(*flat_inputs(spec, probe))
            except Exception as exc:
                return "size %d of %s fails: %s" % (size, dim.__name__, first_line(exc))
    return None


# ----------------------------------------------------------------------------- loading (child side)


def load_runner(version_dir: Path, fmt: str, device: str, spec: IOSpec) -> Callable[..., Any]:
    """The artifact as a callable taking ``forward``'s arguments. The exported formats take flat
    tensors in spec input order and return a flat tuple (``FlatIO``); the generated model.py
    calls them that way, here they are adapted to ``forward``'s arguments."""
    version_dir = Path(version_dir)
    dev = torch.device(device)
    if fmt == "aoti":
        index = dev.index if dev.index is not None else (0 if dev.type == "cuda" else -1)
        return forward_caller(torch._inductor.aoti_load_package(str(version_dir / AOTI_FILE), device_index=index),
                              spec)
    if fmt == "export":
        return forward_caller(torch.export.load(str(version_dir / EXPORT_FILE)).module().to(dev), spec)
    if fmt == "eager":
        name = "aitune_user_model_%s" % uuid.uuid4().hex[:8]
        mod_spec = importlib.util.spec_from_file_location(name, version_dir / SOURCE_FILE)
        if mod_spec is None or mod_spec.loader is None:
            raise FileNotFoundError("cannot import %s" % (version_dir / SOURCE_FILE))
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        model = module.get_model()
        model.load_state_dict(torch.load(version_dir / STATE_FILE, map_location=dev, weights_only=True))
        return model.to(dev).eval()
    raise ValueError("unknown fallback format %r" % fmt)


def check_runner(runner: Callable[..., Any], spec: IOSpec, cases: list, device: str,
                 tolerance: Tolerance | None = None) -> dict[str, float]:
    """Run every case; raise CandidateFailed on the first output outside tolerance."""
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
            if why:
                raise CandidateFailed("output %r differs from eager on %s: %s" % (t.name, label, why))
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
    tolerance: Tolerance | None


def _run_child(target: str, request: CompileRequest | CheckRequest, job: "_Job", what: str) -> Any:
    """Run one child (``export_child``); its whole output is appended to the fallback log, and a
    failure becomes ``CandidateFailed`` with one line."""
    child_log = job.work / ("%s.log" % re.sub(r"\W+", "_", what))
    try:
        value = procs.run_child(target, request, log_path=child_log, timeout_s=job.timeout_s)
    except procs.ChildFailed as failure:
        status = "timed out" if failure.outcome is procs.ChildOutcome.TIMEOUT else "exit %s" % failure.returncode
        append_text(job.log_path, "%s (%s)" % (what, status), failure.output)
        raise CandidateFailed(_child_reason(what, failure)) from None
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
    tolerance: Tolerance | None
    timeout_s: float
    log_path: Path


def _check(job: _Job, fmt: str) -> dict[str, float]:
    request = CheckRequest(job.spec, job.cases_path, job.version_dir, fmt, job.device, job.tolerance)
    errors: dict[str, float] = _run_child(CHECK_TARGET, request, job, "%s check" % fmt)
    return errors


def _remove(version_dir: Path, fmt: str) -> None:
    for name in FILES[fmt]:
        (version_dir / name).unlink(missing_ok=True)


def build_fallback(source_path: Path, model: torch.nn.Module, spec: IOSpec, samples: Sequence[Sample],
                   outputs: Sequence[Any], profiles: ProfileSet | None, version_dir: Path, device: str = "cpu",
                   preferred: str = "auto", timeout_s: float = 600, tolerance: Tolerance | None = None,
                   log_path: Path | None = None) -> FallbackArtifact:
    """Write the best fallback artifact that matches eager into ``version_dir`` and describe it.

    ``preferred`` forces one format ("aoti", "export", "eager"); "auto" tries them best first.
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
    version_dir = Path(version_dir)
    version_dir.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_path) if log_path else version_dir.parent / FALLBACK_LOG
    append_text(log_path, "fallback build (format %s, device %s)" % (preferred, device), str(version_dir))
    max_batch = profiles.max_batch_size if profiles else spec.max_sample_batch
    cases = reference_cases(model, spec, samples, outputs, max_batch)
    independent = rows_independent(model, spec, cases, tolerance)
    wanted = FORMATS if preferred == "auto" else (preferred,)
    skipped = [(f, "not requested (fallback format %r)" % preferred) for f in FORMATS[:FORMATS.index(wanted[0])]]
    eager_ranges: AxisRanges = {t.name: tuple((1, max(max_batch, 1)) if (i == 0 and t.has_batch)
                                              else (a.max, a.max) if a.kind is AxisKind.STATIC else (1, None)
                                              for i, a in enumerate(t.axes)) for t in spec.inputs}
    with tempfile.TemporaryDirectory(prefix="aitune-fallback-") as tmp:
        work = Path(tmp)
        cases_path = work / "cases.pt"
        torch.save({"labels": [c[0] for c in cases], "inputs": [{k: v.cpu() for k, v in c[1].items()} for c in cases],
                    "outputs": [{k: v.cpu() for k, v in c[2].items()} for c in cases]}, cases_path)
        job = _Job(spec, cases_path, version_dir, work, device, tolerance, timeout_s, log_path)
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
                    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, version_dir / STATE_FILE)
                errors = _check(job, fmt)
            except CandidateFailed as exc:
                _remove(version_dir, fmt)
                skipped.append((fmt, str(exc)))
                log.info("fallback %s rejected: %s", fmt, exc)
                continue
            artifact = FallbackArtifact(fmt, device, FILES[fmt], tuple(skipped), errors,
                                        eager_ranges if fmt == "eager" else ranges, independent, fmt != "eager")
            log.info("fallback: %s on %s, max |err| vs eager %s", fmt, device,
                     ", ".join("%s %.3g" % kv for kv in errors.items()))
            return artifact
    kept = Path(tempfile.mkstemp(prefix="aitune-fallback-", suffix=".log")[1])  # the model dir is not kept
    shutil.copyfile(log_path, kept)
    if preferred != "auto":
        raise ModelError("fallback format %r failed: %s" % (preferred, skipped[-1][1]), log_path=str(kept))
    raise ModelError("no PyTorch fallback matched eager: %s" % skipped_summary(skipped), log_path=str(kept))


def skipped_summary(skipped: Sequence[tuple[str, str]]) -> str:
    """``aoti, export skipped: REASON; ...``: formats that failed for one reason share one clause."""
    by_reason: dict[str, list[str]] = {}
    for fmt, reason in skipped:
        by_reason.setdefault(reason, []).append(fmt)
    return "; ".join("%s skipped: %s" % (", ".join(fmts), reason) for reason, fmts in by_reason.items())

