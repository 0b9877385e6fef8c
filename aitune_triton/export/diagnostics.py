"""Keep torch's own output off the console and say in plain words why an export failed.

torch.export and Inductor report through ``logging`` (handlers that torch installs on its own
loggers and that write to stderr: FX graphs, guard dumps, "unable to find user code") and through
``warnings``. A user needs one line with the cause and a file with everything; ``capture_torch_output``
sends both channels to that file while an export runs, and ``export_failure`` turns the exception
into the line (the user's code and where it is, rather than the symbolic-shapes jargon).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sysconfig
import traceback
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch

_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = str(Path(__file__).resolve().parents[1])
_SITE_DIRS = tuple(sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")}, key=len, reverse=True))


@contextlib.contextmanager
def capture_torch_output(log_path: Path) -> Iterator[None]:
    """Append torch's log records, every warning and anything printed to sys.stdout/sys.stderr
    inside the block to ``log_path`` instead of the console; restore torch's handlers afterwards."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger("torch")] + [
        lg for name, lg in list(logging.root.manager.loggerDict.items())
        if name.startswith("torch.") and isinstance(lg, logging.Logger) and lg.handlers]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers[1:]:  # everything reaches "torch" once, and stops there
        lg.handlers, lg.propagate = [], True
    loggers[0].handlers, loggers[0].propagate = [handler], False
    own = logging.getLogger("aitune_triton")
    own.addHandler(handler)

    def to_file(message, category, filename, lineno, file=None, line=None):
        handler.stream.write(warnings.formatwarning(message, category, filename, lineno, line))

    try:
        # torch.export print()s the graph to sys.stderr when tracing fails
        with warnings.catch_warnings(), contextlib.redirect_stdout(handler.stream), \
                contextlib.redirect_stderr(handler.stream):
            warnings.simplefilter("always")
            warnings.showwarning = to_file
            yield
    finally:
        own.removeHandler(handler)
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
        handler.close()


def _shown_path(filename: str) -> str:
    """A library file relative to site-packages (``transformers/models/...``), the user's by its name."""
    for site in _SITE_DIRS:
        if filename.startswith(site + os.sep):
            return os.path.relpath(filename, site)
    return os.path.basename(filename)


def _model_frame(exc: BaseException) -> tuple[str, int, str] | None:
    """The innermost frame of the model's own code (the user's file or a model library such as
    transformers), not torch's, aitune-triton's or the standard library's."""
    frames: list[traceback.FrameSummary] = []
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = list(traceback.extract_tb(current.__traceback__)) + frames
        current = current.__cause__ or current.__context__
    stdlib = sysconfig.get_paths()["stdlib"]
    for f in reversed(frames):
        name = f.filename
        if name.startswith((_TORCH_DIR, _OWN_DIR, stdlib)) or name.startswith("<"):
            continue
        return _shown_path(name), f.lineno or 0, (f.line or "").strip()
    return None


def _where(exc: BaseException) -> str:
    frame = _model_frame(exc)
    if frame is None:
        return ""
    path, line, code = frame
    code = code.split("  #")[0].rstrip(":").strip()  # the statement, without a trailing comment or colon
    return " (`%s` at %s:%d)" % (code, path, line) if code else " (at %s:%d)" % (path, line)


_DATA_DEPENDENT = re.compile(r"GuardOnDataDependentSymNode|data-dependent|data dependent|DataDependentOutputException")


def plain_cause(exc: BaseException, names: Sequence[str] = ()) -> str | None:
    """What in the model stops torch.export, in plain words with the model's line, for the causes
    recognised (value-dependent control flow or sizes, size specialisation); else None.
    ``names``: the input names in FlatIO order (torch names inputs by position)."""
    text = str(exc)
    kind = type(exc).__name__
    if _DATA_DEPENDENT.search(kind + " " + text):
        return "control flow depends on input values%s; torch.export cannot trace it" % _where(exc)
    if "Constraints violated" in text:  # Dims are named <input>_<axis>; inputs are FlatIO's *inputs
        dim = re.search(r"Constraints violated \(([^)]*)\)", text)
        guard = re.search(r"satisfy the generated guard (.+?)\.?(?: \||\n|$)", text)
        fails = re.search(r"with runtime asserts (size \d+ of \w+ fails)", text)
        guard_text = re.sub(r"L\['inputs'\]\[(\d+)\]", lambda m: names[int(m.group(1))] if int(m.group(1)) < len(names)
                            else m.group(0), guard.group(1)) if guard else ""
        return "Constraints violated (%s): the model accepts only some sizes of that axis%s%s; torch.export cannot " \
               "make it dynamic" % (dim.group(1) if dim else "?", " (it needs %s)" % guard_text if guard_text else "",
                                    "; with runtime asserts %s" % fails.group(1) if fails else "")
    script_class = re.search(r"__torch__\.torch\.classes\.([\w.]+) .*does not have a field with name '__obj_flatten__'",
                             text)
    if script_class:  # torch.ao dynamic quantization keeps packed weights in TorchScript objects
        return ("the model holds %s objects (packed weights of torch.ao quantized modules, e.g. quantize_dynamic), "
                "which torch.export cannot trace" % script_class.group(1).rsplit(".", 1)[-1])
    if "FakeTensor" in text:  # a size or a Python value taken from tensor values (lengths, counts)
        return "sizes depend on input values%s; torch.export cannot trace it" % _where(exc)
    return None


def export_failure(exc: BaseException, names: Sequence[str] = ()) -> str:
    """One line for any export failure: the plain cause, else the exception's first line, with the model's line."""
    plain = plain_cause(exc, names)
    if plain:
        return plain
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return "%s: %s%s" % (type(exc).__name__, first[:300], _where(exc))


def child_failure(output: str) -> str | None:
    """A plain cause for a child's output where one is recognisable, else None."""
    match = re.search(r"Deserializing ([\w.]+) in pytree is not registered", output)
    if match:
        return ("the artifact refers to the Python type %s, which must be imported to load it; "
                "return tensors, a tuple or a dict from forward()" % match.group(1))
    return None


def append_text(log_path: Path, title: str, text: str) -> None:
    """Append a titled section (a child's output) to the log."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as f:
        f.write("\n===== %s =====\n%s\n" % (title, text.rstrip()))
