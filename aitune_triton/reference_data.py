"""A model's recorded samples and their eager outputs (``reference.npz``): written by
``generate``, read by every check against eager (the fallback, the TensorRT plan, validate, tune).

A small module of its own, below the pipeline's subpackages, so that each step reads the file
with this one reader without importing a later step.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aitune_triton.errors import UserError

REFERENCE = "reference.npz"


@dataclass(frozen=True)
class ReferenceCase:
    """One recorded sample: named inputs and the eager outputs they gave."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def save_reference(path: Path, cases: list[ReferenceCase]) -> None:
    arrays = {}
    for i, case in enumerate(cases):
        for k, v in case.inputs.items():
            arrays["%d/input/%s" % (i, k)] = v
        for k, v in case.outputs.items():
            arrays["%d/output/%s" % (i, k)] = v
    np.savez_compressed(path, **arrays)


def load_reference(path: Path) -> list[ReferenceCase]:
    """The recorded cases; UserError naming the file when it is missing, truncated, empty or not ours."""
    cases: dict[int, ReferenceCase] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                idx, kind, name = key.split("/", 2)
                case = cases.setdefault(int(idx), ReferenceCase({}, {}))
                (case.inputs if kind == "input" else case.outputs)[name] = data[key]
    except FileNotFoundError:
        raise UserError("%s not found; regenerate the model" % path) from None
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, AttributeError) as exc:
        # np.load gives EOFError on an empty file, BadZipFile on a truncated one
        raise UserError("%s is not a readable reference file (%s: %s); regenerate the model"
                        % (path, type(exc).__name__, str(exc)[:200] or "empty file")) from None
    return [cases[i] for i in sorted(cases)]
