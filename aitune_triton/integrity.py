"""SHA-256 of every artifact of a model directory, recorded at generate time, checked before loading.

The artifacts are what the server executes or deserialises: everything under the numeric version
directories (``1/model.py``, the ``.pt2`` package or program, weights, a plan) and the staged
TensorRT files (``tensorrt/model.onnx``, ``build_plan.sh``). Some loaders fall back to pickle
(``torch.export.load`` retries with ``weights_only=False``), so a replaced file can run code: a
file whose hash differs from ``manifest.json``'s, a recorded file that is missing and a file that
was added are all refused before anything loads the model. ``config.pbtxt`` (tuned and
hand-edited by design), ``reference.npz`` (read without pickle) and warmup data are not covered;
nor is the manifest itself (this guards against replaced artifacts, not against an attacker who
can also rewrite the manifest).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aitune_triton.errors import ModelError

STAGED_DIRS = ("tensorrt",)
_SKIP_DIRS = {"__pycache__"}  # the Python stub writes bytecode next to model.py


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_files(model_dir: Path) -> list[Path]:
    """Artifact files of a model dir, relative to it: version dirs and staged TensorRT files."""
    model_dir = Path(model_dir)
    roots = [p for p in model_dir.iterdir() if p.is_dir() and (p.name.isdigit() or p.name in STAGED_DIRS)]
    files = []
    for root in roots:
        for path in root.rglob("*"):
            rel = path.relative_to(model_dir)
            if _SKIP_DIRS.intersection(rel.parts) or path.is_dir():
                continue
            files.append(rel)
    return sorted(files)


def artifact_hashes(model_dir: Path) -> dict[str, str]:
    """``{"1/model.pt2": "<sha256>", ...}`` for the manifest."""
    return {str(rel): sha256_file(Path(model_dir) / rel) for rel in artifact_files(model_dir)}


def artifact_problems(model_dir: Path, recorded: dict[str, str]) -> list[str]:
    """What differs from the recorded hashes: changed, missing and unrecorded files."""
    model_dir = Path(model_dir)
    problems = []
    present = {str(rel) for rel in artifact_files(model_dir)}
    for rel, expected in sorted(recorded.items()):
        path = model_dir / rel
        if rel not in present:
            problems.append("%s is missing" % rel)
        elif sha256_file(path) != expected:
            problems.append("%s does not match its recorded SHA-256" % rel)
    problems += ["%s was added after generate" % rel for rel in sorted(present - set(recorded))]
    return problems


def verify_artifacts(model_dir: Path, recorded: dict[str, str] | None) -> bool:
    """Raise ModelError (naming the files) unless the artifacts match ``recorded``.

    Returns False, without checking, for a manifest from before hashes were recorded.
    """
    if not recorded:
        return False
    problems = artifact_problems(model_dir, recorded)
    if problems:
        raise ModelError("refusing to load %s: %s (changed since generate: regenerate the model, or restore the "
                         "files)" % (model_dir, "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")))
    return True
