"""Reading typed fields out of parsed JSON (the manifest and its sections).

A manifest is user-reachable data (it can be hand-edited or truncated), so every section's
``from_dict`` checks each field's JSON type and names the key when it is wrong; ``Manifest.load``
turns the ``TypeError`` into its one-line error. Standard library only: the section types of
``export/``, ``tensorrt/`` and ``tune/`` use it without importing one another.
"""

from __future__ import annotations

import json
from typing import Any

_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an object", type(None): "null"}


def typed(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` when it is a ``kind`` (one type or a tuple; JSON's true/false is no number), else a
    ``TypeError`` naming the key ``what``."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = [_KIND_NAMES.get(k, k.__name__) for k in kinds if not (k is int and float in kinds)]
        raise TypeError("%s must be %s, got %s" % (what, " or ".join(names), json.dumps(value, default=repr)[:80]))
    return value


def strings(value: Any, what: str) -> tuple[str, ...]:
    """A JSON list of strings as a tuple."""
    return tuple(typed(v, str, what) for v in typed(value, list, what))


def ints(value: Any, what: str) -> tuple[int, ...]:
    """A JSON list of integers as a tuple."""
    return tuple(typed(v, int, what) for v in typed(value, list, what))
