"""Model names: they become directory names in the model repository and Triton's model names.

A small module on purpose: the repository writer (``triton/repository.py``), the CLI and
``GenerateConfig`` all check names here without importing one another.
"""

from __future__ import annotations

import re

from aitune_triton.errors import UserError

_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def validate_model_name(name: str) -> str:
    """Model names become directory names: no separators, no ``..``, no leading dot, Triton-legal."""
    if not isinstance(name, str) or not name:
        raise UserError("model name is empty; pass --name with letters, digits, '_', '-' or '.'")
    if name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise UserError("model name %r is not a plain directory name; use letters, digits, '_', '-' or '.', "
                        "not starting with '.'" % name)
    if not _MODEL_NAME.fullmatch(name):
        raise UserError("model name %r is not allowed; use 1-128 letters, digits, '_', '-' or '.'" % name[:140])
    return name
