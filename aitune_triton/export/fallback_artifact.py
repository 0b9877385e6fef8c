"""What a PyTorch fallback build leaves in the version directory, as data.

A small module on purpose: ``triton/python_model.py`` writes the served model from a
``FallbackArtifact`` and must not import torch's export machinery (``export/torch_export.py``)
to name it.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aitune_triton.json_fields import strings, typed

FORMATS = ("aoti", "export", "eager")
AOTI_FILE = "model.aoti.pt2"
EXPORT_FILE = "model.export.pt2"
SOURCE_FILE = "user_model.py"  # not model.py: that name belongs to the Triton model in the same dir
STATE_FILE = "state_dict.pt"
FALLBACK_LOG = Path("logs") / "fallback.log"  # in the model dir, beside the version dir (Triton ignores it)
FILES = {"aoti": (AOTI_FILE,), "export": (EXPORT_FILE,), "eager": (SOURCE_FILE, STATE_FILE)}


def aoti_package_metadata(package: Path) -> dict[str, str]:
    """What an AOTInductor package records of the host that compiled it (``AOTI_MACHINE``,
    ``AOTI_CPU_ISA``, ``AOTI_COMPUTE_CAPABILITY``: its ``*_metadata.json``), ``{}`` when unreadable."""
    try:
        with zipfile.ZipFile(package) as z:
            name = next((n for n in sorted(z.namelist()) if n.endswith("_metadata.json")), None)
            found = json.loads(z.read(name)) if name else {}
    except (OSError, ValueError, zipfile.BadZipFile, KeyError):
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


@dataclass(frozen=True)
class FallbackArtifact:
    """The artifact kept in the version dir and what the generated model.py needs to serve it.

    ``axis_ranges`` holds, per input and axis, the sizes the artifact accepts (``None`` as the
    upper bound: unbounded). AOTInductor does not check input shapes or dtypes at run time, so the
    model.py validates requests against these before calling it. ``flat_io``: the artifact is a
    ``FlatIO`` export (flat tensors in spec input order in, a flat tuple in spec output order out).
    ``max_detections``: forward returns one dict per image, served through
    ``aitune_eager.PaddedDetections`` with that many rows per image (0: it returns tensors); an
    exported artifact has the padding inside, the eager format wraps the user's module again.
    """

    format: str
    device: str
    files: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    max_errors: dict[str, float] = field(default_factory=dict)
    axis_ranges: dict[str, tuple[tuple[int, int | None], ...]] = field(default_factory=dict)
    row_independent: bool = False
    flat_io: bool = False
    max_detections: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = {"format": self.format, "device": self.device, "files": list(self.files),
             "skipped": [list(s) for s in self.skipped], "max_errors": dict(self.max_errors),
             "axis_ranges": {k: [list(r) for r in v] for k, v in self.axis_ranges.items()},
             "row_independent": self.row_independent, "flat_io": self.flat_io}
        if self.max_detections:  # detectors only: other manifests stay as they were
            d["max_detections"] = self.max_detections
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FallbackArtifact":
        """From the manifest's ``artifact`` section; a wrong JSON type is a ``TypeError`` naming the key."""
        skipped = []
        for s in typed(d.get("skipped", []), list, "artifact.skipped"):
            fmt, reason = strings(s, "artifact.skipped[]")
            skipped.append((fmt, reason))
        ranges = {}
        for name, axes in typed(d.get("axis_ranges", {}), dict, "artifact.axis_ranges").items():
            where = "artifact.axis_ranges.%s" % name
            ranges[name] = tuple((typed(lo, int, where), None if hi is None else typed(hi, int, where))
                                 for lo, hi in typed(axes, list, where))
        return cls(format=typed(d["format"], str, "artifact.format"),
                   device=typed(d["device"], str, "artifact.device"),
                   files=strings(d["files"], "artifact.files"), skipped=tuple(skipped),
                   max_errors={k: float(typed(v, (int, float), "artifact.max_errors.%s" % k))
                               for k, v in typed(d.get("max_errors", {}), dict, "artifact.max_errors").items()},
                   axis_ranges=ranges,
                   row_independent=typed(d.get("row_independent", False), bool, "artifact.row_independent"),
                   flat_io=typed(d.get("flat_io", False), bool, "artifact.flat_io"),
                   max_detections=typed(d.get("max_detections", 0), int, "artifact.max_detections"))
