"""What a PyTorch fallback build leaves in the version directory, as data.

A small module on purpose: ``triton/python_model.py`` writes the served model from a
``FallbackArtifact`` and must not import torch's export machinery (``export/torch_export.py``)
to name it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("aoti", "export", "eager")
AOTI_FILE = "model.aoti.pt2"
EXPORT_FILE = "model.export.pt2"
SOURCE_FILE = "user_model.py"  # not model.py: that name belongs to the Triton model in the same dir
STATE_FILE = "state_dict.pt"
FALLBACK_LOG = Path("logs") / "fallback.log"  # in the model dir, beside the version dir (Triton ignores it)
FILES = {"aoti": (AOTI_FILE,), "export": (EXPORT_FILE,), "eager": (SOURCE_FILE, STATE_FILE)}


@dataclass(frozen=True)
class FallbackArtifact:
    """The artifact kept in the version dir and what the generated model.py needs to serve it.

    ``axis_ranges`` holds, per input and axis, the sizes the artifact accepts (``None`` as the
    upper bound: unbounded). AOTInductor does not check input shapes or dtypes at run time, so the
    model.py validates requests against these before calling it. ``flat_io``: the artifact is a
    ``FlatIO`` export (flat tensors in spec input order in, a flat tuple in spec output order out).
    """

    format: str
    device: str
    files: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    max_errors: dict[str, float] = field(default_factory=dict)
    axis_ranges: dict[str, tuple[tuple[int, int | None], ...]] = field(default_factory=dict)
    row_independent: bool = False
    flat_io: bool = False

    def to_dict(self) -> dict:
        return {"format": self.format, "device": self.device, "files": list(self.files),
                "skipped": [list(s) for s in self.skipped], "max_errors": dict(self.max_errors),
                "axis_ranges": {k: [list(r) for r in v] for k, v in self.axis_ranges.items()},
                "row_independent": self.row_independent, "flat_io": self.flat_io}

    @classmethod
    def from_dict(cls, d: dict) -> "FallbackArtifact":
        return cls(d["format"], d["device"], tuple(d["files"]), tuple((f, r) for f, r in d.get("skipped", ())),
                   {k: float(v) for k, v in d.get("max_errors", {}).items()},
                   {k: tuple((int(lo), None if hi is None else int(hi)) for lo, hi in v)
                    for k, v in d.get("axis_ranges", {}).items()},
                   bool(d.get("row_independent", False)), bool(d.get("flat_io", False)))
