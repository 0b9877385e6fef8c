"""Validation of a served repository (``harness``, ``checks/``, ``report``).

``aitune_triton.validate`` is also the ``validate`` command of the Python API: the package object
is callable (``aitune_triton.validate(repo, options)`` runs ``aitune_triton.commands.validate``),
so the command and this subpackage share the name without one hiding the other.
"""

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from aitune_triton.commands import validate

        return validate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
