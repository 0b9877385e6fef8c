"""Stage-2 tuning on a live server (``search``, ``space``, ``measure``, ``writeback``...).

``aitune_triton.tune`` is also the ``tune`` command of the Python API: the package object is
callable (``aitune_triton.tune(repo, model, options)`` runs ``aitune_triton.commands.tune``), so
the command and this subpackage share the name without one hiding the other.
"""

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from aitune_triton.commands import tune

        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
