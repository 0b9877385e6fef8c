"""A module with flat tensor inputs and outputs around the user's model, for ``torch.export``.

An ExportedProgram or AOTInductor package records the pytree structure of what it takes and
returns. A Hugging Face ``ModelOutput``, a dataclass or a named tuple is a custom pytree node:
loading the artifact then needs the library that registered it (``transformers``), which neither
the child process that checks the artifact nor the Triton stub imports. Exporting ``FlatIO``
instead leaves only a tuple of tensors on both sides, in the order the ``IOSpec`` recorded, so the
artifact loads with torch alone and the serving code binds inputs and outputs by position.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils import _pytree as pytree

from aitune_triton.spec import IOSpec


class FlatIO(torch.nn.Module):
    """``forward(*inputs)`` in spec input order → a tuple of the output leaves in spec output order."""

    def __init__(self, model: torch.nn.Module, bindings: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.bindings = tuple(bindings)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args, kwargs = [], {}
        for binding, value in zip(self.bindings, inputs, strict=True):
            kind, _, key = binding.partition(":")
            if kind == "arg":
                args.append(value)
            else:
                kwargs[key] = value
        # the order of spec.flatten_outputs (tree_flatten_with_path), which named the outputs
        return tuple(pytree.tree_leaves(self.model(*args, **kwargs)))


def flat_model(model: torch.nn.Module, spec: IOSpec) -> FlatIO:
    return FlatIO(model, [t.binding for t in spec.inputs])


def flat_inputs(spec: IOSpec, feed: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The feed's tensors in spec input order: what a ``FlatIO`` artifact takes."""
    return tuple(feed[t.name] for t in spec.inputs)


def forward_caller(flat: Callable[..., Any], spec: IOSpec) -> Callable[..., tuple]:
    """A flat artifact as a callable taking ``forward``'s own arguments (args by position, kwargs by
    keyword), for code that calls every format the same way (the checks, stage-1 timing)."""
    bindings = [t.binding.partition(":") for t in spec.inputs]

    def call(*args: Any, **kwargs: Any) -> tuple:
        return tuple(flat(*[args[int(key)] if kind == "arg" else kwargs[key] for kind, _, key in bindings]))

    return call
