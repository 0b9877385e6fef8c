"""The one integrity check of a generated model directory, run before anything loads it
(``validate``, ``serve``, ``tune``, ``build-plan``, ``pack-env``).

The artifacts are what the server executes or deserialises: everything under the numeric version
directories (``1/model.py``, the ``.pt2`` package or program, weights, a plan), the staged
TensorRT files (``tensorrt/model.onnx``, ``build_plan.sh``) and a packed Python environment. Some
loaders fall back to pickle (``torch.export.load`` retries with ``weights_only=False``), so a
replaced file can run code: a file whose hash differs from ``manifest.json``'s, a recorded file
that is missing, a file that was added and a manifest that records no hashes are all refused.

Hashes alone are not enough, because Triton loads more than the hashed files:

- a symlink (to a file or a directory) is followed by Triton and the stub but not by the hash
  walk, so no symlink may be inside a model directory, and a model directory that is a symlink
  must stay inside the repository; this is checked before any file of the model is read;
- Triton reads any sub-directory whose name ``std::stoll`` parses (``' 3'``, ``'+3'``, ``'3x'``)
  as a version, so only canonical version names (``3``) are allowed;
- ``config.pbtxt`` (tuned and hand-edited by design, so not hashed) can name other files:
  ``default_model_filename`` and ``cc_model_filenames`` must be plain names inside the version
  directory, ``EXECUTION_ENV_PATH`` a hashed artifact inside the model directory, warm-up data plain names
  in ``warmup/``, no repository agents, and the backend the one the model was generated for.

``reference.npz`` (read without pickle) and the warm-up data are not hashed; nor is the manifest
itself (this guards against replaced artifacts and edited configs, not against an attacker who
can also rewrite the manifest).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Mapping

from aitune_triton.errors import ModelError


STAGED_DIRS = ("tensorrt",)
# top-level files of a model dir that run code when served (``pack-env``'s environment)
TOP_LEVEL_ARTIFACTS = ("python_env.tar.gz",)
# what Triton's std::stoll reads as a version number, and the only spelling allowed for one
_VERSION_LIKE = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]")
_CANONICAL_VERSION = re.compile(r"0|[1-9][0-9]*")
# Triton's platform names and the backend each one loads
_PLATFORM_BACKEND = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch",
                     "tensorflow_savedmodel": "tensorflow", "tensorflow_graphdef": "tensorflow"}
_MODEL_DIR_VAR = "$$TRITON_MODEL_DIRECTORY/"
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
    files = [Path(name) for name in TOP_LEVEL_ARTIFACTS if (model_dir / name).is_file()]
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


def artifact_problems(model_dir: Path, recorded: dict[str, str], versions: bool = True) -> list[str]:
    """What differs from the recorded hashes: changed, missing and unrecorded files. ``versions=False``
    leaves the version directories out (``build-plan`` replaces them of a model it builds in place)."""
    model_dir = Path(model_dir)
    problems = []
    present = {str(rel) for rel in artifact_files(model_dir) if versions or not rel.parts[0].isdigit()}
    if not versions:
        recorded = {rel: sha for rel, sha in recorded.items() if not Path(rel).parts[0].isdigit()}
    for rel, expected in sorted(recorded.items()):
        path = model_dir / rel
        if rel not in present:
            problems.append("%s is missing" % rel)
        elif sha256_file(path) != expected:
            problems.append("%s does not match its recorded SHA-256" % rel)
    problems += ["%s was added after generate" % rel for rel in sorted(present - set(recorded))]
    return problems


def refusal(model_dir: Path, problems: list[str], advice: str) -> ModelError:
    return ModelError("refusing to load %s: %s (%s)" % (model_dir, "; ".join(problems[:5]) + (
        "; ..." if len(problems) > 5 else ""), advice))


def verify_artifacts(model_dir: Path, recorded: dict[str, str], versions: bool = True) -> None:
    """Raise ModelError (naming the files) unless the artifacts match ``recorded`` (``versions``: see
    ``artifact_problems``); a manifest that records no hashes is refused too (it would turn the check off)."""
    if not recorded:
        raise ModelError("refusing to load %s: its manifest records no artifact hashes, so its files cannot be "
                         "checked (regenerate the model)" % model_dir)
    problems = artifact_problems(model_dir, recorded, versions)
    if problems:
        raise refusal(model_dir, problems, "changed since generate: regenerate the model, or restore the files")


def tree_problems(model_dir: Path, repo: Path | None = None) -> list[str]:
    """Symlinks in (or a model dir symlinked out of) the repository and version directories Triton
    would read under another name; found from directory entries alone, before any file is read."""
    model_dir = Path(model_dir)
    root = Path(repo) if repo is not None else model_dir.parent
    problems = []
    if model_dir.is_symlink():
        target = model_dir.resolve()
        if not target.is_relative_to(root.resolve()) or target == root.resolve():
            problems.append("%s is a symlink to %s, outside the repository" % (model_dir.name, os.readlink(model_dir)))
            return problems
    for top, dirs, files in os.walk(model_dir):  # does not enter symlinked directories, but lists them
        for name in sorted(dirs + files):
            path = Path(top) / name
            if path.is_symlink():
                problems.append("%s is a symlink (to %s); Triton would load what it points to, which is not "
                                "checked" % (path.relative_to(model_dir), os.readlink(path)))
    for entry in sorted(model_dir.iterdir()):
        if entry.is_dir() and _VERSION_LIKE.match(entry.name) and not _CANONICAL_VERSION.fullmatch(entry.name):
            problems.append("directory %r is read by Triton as version %s; version directories are plain numbers"
                            % (entry.name, _stoll(entry.name)))
    return problems


def _stoll(name: str) -> str:
    match = re.match(r"\s*([+-]?[0-9]+)", name)
    return str(int(match.group(1))) if match else "?"


def _plain_name(value: str) -> bool:
    return bool(value) and "/" not in value and "\\" not in value and "\0" not in value and value not in (".", "..")


def config_problems(model_dir: Path, backend: str, recorded: Mapping[str, str]) -> list[str]:
    """What ``config.pbtxt`` makes Triton load beyond the checked files (see the module docstring).

    ``recorded`` is the manifest's artifact hashes: ``EXECUTION_ENV_PATH`` must name one of them. A
    path merely inside the model directory is not enough, because only the version dirs, the staged
    TensorRT files and ``python_env.tar.gz`` are hashed: a tarball planted beside them would be
    neither checked nor reported as added, yet the stub would extract and run it."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = Path(model_dir) / "config.pbtxt"
    try:
        cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except FileNotFoundError:
        return ["config.pbtxt is missing"]
    except (text_format.ParseError, UnicodeDecodeError):
        return []  # Triton loads nothing from it; the config reader reports where it breaks
    problems = []
    loads = cfg.backend or _PLATFORM_BACKEND.get(cfg.platform, cfg.platform)
    if loads != backend:
        problems.append("config.pbtxt names backend %r%s, but the model was generated for the %r backend"
                        % (cfg.backend or cfg.platform, " (platform)" if not cfg.backend else "", backend))
    names = ([("default_model_filename", cfg.default_model_filename)] if cfg.default_model_filename else []) + \
        [("cc_model_filenames[%s]" % k, v) for k, v in sorted(cfg.cc_model_filenames.items())]
    problems += ["config.pbtxt %s %r is not a file name inside the version directory" % (what, value)
                 for what, value in names if not _plain_name(value)]
    for key, param in sorted(cfg.parameters.items()):
        value = param.string_value
        if key == "EXECUTION_ENV_PATH":
            rel = value[len(_MODEL_DIR_VAR):] if value.startswith(_MODEL_DIR_VAR) else None
            if rel is None or not all(_plain_name(part) for part in rel.split("/")):
                problems.append("config.pbtxt parameter EXECUTION_ENV_PATH %r is not a file inside the model "
                                "directory (%s<file>)" % (value, _MODEL_DIR_VAR))
            elif rel not in recorded:
                problems.append("config.pbtxt parameter EXECUTION_ENV_PATH %r names a file the manifest does not "
                                "record, so it is not checked (pack-env writes and records %s)"
                                % (value, TOP_LEVEL_ARTIFACTS[0]))
        elif "/.." in value or value.startswith(("/", "..")):
            problems.append("config.pbtxt parameter %s %r names a path outside the model directory" % (key, value))
    for warmup in cfg.model_warmup:
        for name, data in sorted(warmup.inputs.items()):
            if data.input_data_file and not _plain_name(data.input_data_file):
                problems.append("config.pbtxt warm-up input %s reads %r, not a file in warmup/"
                                % (name, data.input_data_file))
    if cfg.model_repository_agents.agents:
        problems.append("config.pbtxt adds repository agents (%s), which run code at load"
                        % ", ".join(a.name for a in cfg.model_repository_agents.agents))
    return problems


def drop_bytecode_caches(model_dir: Path) -> None:
    """Remove the ``__pycache__`` dirs the stub wrote beside the checked sources: Python runs a
    cached ``.pyc`` whose header matches the source's size and mtime without reading the source,
    so a planted one would run unchecked code. They are caches: the stub writes them again."""
    import shutil

    for cache in sorted(Path(model_dir).glob("*/**/__pycache__")):
        if cache.is_dir() and not cache.is_symlink():
            try:
                shutil.rmtree(cache)
            except OSError as exc:
                raise ModelError("refusing to load %s: cannot remove the bytecode cache %s (%s); delete it, as a "
                                 "cached .pyc runs instead of its checked source" % (model_dir, cache, exc.strerror)) \
                    from None
