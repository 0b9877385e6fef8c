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

from aitune_triton import defaults
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


def check_npz_size(path: Path, limit: int | None = None) -> None:
    """UserError unless the arrays of the ``.npz`` at ``path`` decompress to at most ``limit`` bytes,
    read from the zip directory before any member is inflated (a small file can claim gigabytes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip at all: np.load reports it
    total = sum(m.file_size for m in members)
    limit = defaults.NPZ_MAX_BYTES if limit is None else limit
    if total > limit:
        raise UserError("%s decompresses to %d MB (%d arrays), more than the %d MB a recorded sample file may hold; "
                        "regenerate the model" % (path, total // 10 ** 6, len(members), limit // 10 ** 6))


def load_reference(path: Path) -> list[ReferenceCase]:
    """The recorded cases; UserError naming the file when it is missing, truncated, empty, too large
    once decompressed or not ours."""
    cases: dict[int, ReferenceCase] = {}
    try:
        check_npz_size(path)
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
