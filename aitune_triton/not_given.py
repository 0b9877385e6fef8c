"""``NOT_GIVEN``: an override the caller did not give, kept apart from ``None``, and
``given_changes``, the one rule every ``replace`` of the configuration applies to its changes.

A module of its own, below ``config`` and ``tensorrt.config``: both configs' ``replace`` skip it,
and ``config`` imports ``tensorrt.config``, so the sentinel cannot live in ``config``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from aitune_triton.errors import UserError


class NotGiven:
    """The type of :data:`NOT_GIVEN`: an override the caller did not give, as opposed to ``None``
    (which is a value: "derive it from the samples"). Falsy, one instance."""

    _instance: "NotGiven | None" = None

    def __new__(cls) -> "NotGiven":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "NOT_GIVEN"  # pickles (and deep-copies) as the same instance


# ``GenerateConfig.replace(x=NOT_GIVEN)`` keeps ``x``; ``replace(x=None)`` sets it to None. The CLI
# passes NOT_GIVEN for every option the user left out, so get_config()'s values stay.
NOT_GIVEN = NotGiven()


def given_changes(cls: type, changes: Mapping[str, Any], what: str | None = None) -> dict[str, Any]:
    """``changes`` without the NOT_GIVEN ones; a name that is not a field of the dataclass ``cls``
    is a UserError naming the valid fields (``what``: how the caller spelled the changes), rather
    than the TypeError of ``dataclasses.replace`` after model.py has loaded."""
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise UserError("unknown %s field(s) %s in %s; the fields are: %s"
                        % (cls.__name__, ", ".join(unknown), what or "the changes", ", ".join(fields)))
    return {k: v for k, v in changes.items() if v is not NOT_GIVEN}
