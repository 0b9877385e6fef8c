"""The manifest's ``checks`` section: what the spec step's probe found (``aitune_triton.probe``).

A small module of its own so that the probe (an early pipeline step) and the manifest (written by
``triton/``) share the type without the probe importing ``triton/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aitune_triton.json_fields import ints, strings, typed


@dataclass(frozen=True)
class BatchingProbe:
    """Whether each row's outputs inside mixed batches equal the row run alone
    (``aitune_triton.probe``): dynamic batching is enabled only then."""

    rows_independent: bool
    probe_rows: tuple[str, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"rows_independent": self.rows_independent, "dynamic_batching": self.rows_independent,
                "probe_rows": list(self.probe_rows), "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BatchingProbe":
        return cls(typed(d["rows_independent"], bool, "checks.batching.rows_independent"),
                   strings(d.get("probe_rows", []), "checks.batching.probe_rows"),
                   typed(d.get("reason", ""), str, "checks.batching.reason"))


@dataclass(frozen=True)
class ChecksSection:
    """What probing found and what the user was told: the batching verdict (batching models only),
    output axes found to change size with the values, the output dims ``get_config()`` declared,
    and the notes printed at generate time."""

    batching: BatchingProbe | None = None
    data_dependent_axes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    declared_output_dims: dict[str, tuple[int, ...]] | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.batching is not None:
            d["batching"] = self.batching.to_dict()
        d["data_dependent_axes"] = {k: list(v) for k, v in self.data_dependent_axes.items()}
        if self.declared_output_dims is not None:
            d["declared_output_dims"] = {k: list(v) for k, v in self.declared_output_dims.items()}
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ChecksSection":
        typed(d, dict, "checks")
        declared = d.get("declared_output_dims")
        return cls(
            batching=BatchingProbe.from_dict(typed(d["batching"], dict, "checks.batching")) if d.get("batching")
            else None,
            data_dependent_axes={k: ints(v, "checks.data_dependent_axes.%s" % k) for k, v in
                                 typed(d.get("data_dependent_axes", {}), dict, "checks.data_dependent_axes").items()},
            declared_output_dims=None if declared is None else {
                k: ints(v, "checks.declared_output_dims.%s" % k)
                for k, v in typed(declared, dict, "checks.declared_output_dims").items()},
            notes=strings(d.get("notes", []), "checks.notes"))
