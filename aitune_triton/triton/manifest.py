"""``manifest.json`` and ``reference.npz``: the contract between generate, validate and tune.

Each generated model directory holds a manifest (versions, spec, profiles, tolerances, the
artifact chosen and why, TensorRT status) and the reference inputs/outputs recorded from eager
PyTorch, so ``validate`` can check a served model without the user's model.py.

Every section is a frozen dataclass whose ``to_dict``/``from_dict`` read and write the JSON
``manifest.json`` holds; wrong types anywhere make :meth:`Manifest.load` raise one ``UserError``
line naming the file. ``config`` stays the dict of ``GenerateConfig.to_dict()`` (read back with
``GenerateConfig.from_dict``: the manifest does not import the user-facing config).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union


from aitune_triton.envelope import Envelope
from aitune_triton.errors import UserError
from aitune_triton.export.fallback_artifact import FallbackArtifact
from aitune_triton.json_fields import typed
from aitune_triton.numerics import Tolerance
from aitune_triton.runtime.aitune_runtime import Requirements
from aitune_triton.spec import IOSpec
from aitune_triton.atomic import replace_file_atomically
from aitune_triton.profile_set import ProfileSet
from aitune_triton.probe_section import ChecksSection
from aitune_triton.tensorrt.section import TensorRTSection
from aitune_triton.triton.tuning_section import TuneHistoryEntry, TuningSection

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Versions:
    """What generated the model: this package, Python, torch and the exporters, where it ran."""

    aitune_triton: str | None = None
    python: str | None = None
    torch: str | None = None
    cuda: str | None = None
    device: str | None = None
    onnx: str | None = None
    onnxruntime: str | None = None
    gpu: str | None = None  # only when generated on a GPU
    compute_capability: str | None = None  # "8.0"; only when generated on a GPU

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in d.items() if v is not None or k not in ("gpu", "compute_capability")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Versions":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: None if v is None else typed(v, str, "versions.%s" % k)
                      for k, v in typed(d, dict, "versions").items() if k in known})


@dataclass(frozen=True)
class OnnxSection:
    """The ONNX Runtime model's artifact: the opset and the ONNX Runtime check against eager
    (``export.onnx``'s check report, as its ``to_dict`` wrote it)."""

    opset: int
    check: dict[str, Any] = field(default_factory=dict)
    format: str = "onnx"

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "opset": self.opset, "check": dict(self.check)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OnnxSection":
        return cls(opset=typed(d["opset"], int, "artifact.opset"),
                   check=typed(d.get("check", {}), dict, "artifact.check"))


ArtifactSection = Union[FallbackArtifact, OnnxSection]


def artifact_from_dict(d: dict[str, Any]) -> ArtifactSection | None:
    """The ``artifact`` section: ``{}`` (a TensorRT-only model has none), an ONNX or a fallback one."""
    if not typed(d, dict, "artifact"):
        return None
    return OnnxSection.from_dict(d) if d.get("format") == "onnx" else FallbackArtifact.from_dict(d)


@dataclass(frozen=True)
class Manifest:
    """What a model directory is and how to check it. ``backend`` is the Triton backend serving it."""

    name: str
    backend: str
    spec: IOSpec
    profiles: ProfileSet
    max_batch_size: int
    tolerances: dict[str, Tolerance]
    versions: Versions
    artifact: ArtifactSection | None = None
    config: dict[str, Any] = field(default_factory=dict)  # GenerateConfig.to_dict()
    tensorrt: TensorRTSection | None = None
    checks: ChecksSection = field(default_factory=ChecksSection)
    tuning: TuningSection = field(default_factory=TuningSection)
    history: tuple[TuneHistoryEntry, ...] = ()  # one entry per config tune replaced, oldest first
    files: dict[str, str] = field(default_factory=dict)  # artifact path -> SHA-256 (aitune_triton.integrity)
    # what the serving side needs for a Python-backend model; None for the other backends
    runtime_requirements: Requirements | None = None
    # the sizes each input axis accepts and how they were chosen, with the measured batch curve
    envelope: Envelope | None = None
    # a model of a raw-data pipeline (aitune_triton.pipeline): its role ("pre", "post", "ensemble")
    # and the models it composes; empty for every other model
    pipeline: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # sections given as their JSON dicts (from_dict, or callers building a manifest by hand)
        # become their types here, the one place
        if isinstance(self.versions, dict):
            object.__setattr__(self, "versions", Versions.from_dict(self.versions))
        if isinstance(self.artifact, dict):
            object.__setattr__(self, "artifact", artifact_from_dict(self.artifact))
        if isinstance(self.tensorrt, dict):
            object.__setattr__(self, "tensorrt", TensorRTSection.from_dict(self.tensorrt) if self.tensorrt else None)
        if isinstance(self.checks, dict):
            object.__setattr__(self, "checks", ChecksSection.from_dict(self.checks))
        if isinstance(self.tuning, dict):
            object.__setattr__(self, "tuning", TuningSection.from_dict(self.tuning))
        if any(isinstance(h, dict) for h in self.history):
            object.__setattr__(self, "history", tuple(TuneHistoryEntry.from_dict(h) if isinstance(h, dict) else h
                                                      for h in self.history))
        if isinstance(self.envelope, dict):
            object.__setattr__(self, "envelope", Envelope.from_dict(self.envelope) if self.envelope else None)
        if isinstance(self.runtime_requirements, dict):
            object.__setattr__(self, "runtime_requirements", Requirements.from_dict(self.runtime_requirements)
                               if self.runtime_requirements else None)

    def sealed(self, model_dir: Path) -> "Manifest":
        """This manifest with the SHA-256 of every artifact now in ``model_dir`` (call once the files are final)."""
        from aitune_triton.integrity import artifact_hashes

        return dataclasses.replace(self, files=artifact_hashes(model_dir))

    def to_dict(self) -> dict:
        d = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "backend": self.backend,
            "max_batch_size": self.max_batch_size,
            "spec": self.spec.to_dict(),
            "profiles": self.profiles.to_dict(),
            "tolerances": {k: v.to_dict() for k, v in self.tolerances.items()},
            "versions": self.versions.to_dict(),
            "artifact": self.artifact.to_dict() if self.artifact else {},
            "config": self.config,
            "tensorrt": self.tensorrt.to_dict() if self.tensorrt else {},
            "checks": self.checks.to_dict(),
            "tuning": self.tuning.to_dict(),
            "history": [h.to_dict() for h in self.history],
            "files": dict(self.files),
            "runtime_requirements": self.runtime_requirements.to_dict() if self.runtime_requirements else {},
        }
        if self.envelope is not None:  # manifests written before the envelope existed read back unchanged
            d["envelope"] = self.envelope.to_dict()
        if self.pipeline:
            d["pipeline"] = dict(self.pipeline)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise UserError("manifest schema_version %r is not supported (expected %d); regenerate the model"
                            % (d.get("schema_version"), SCHEMA_VERSION))
        return cls(
            name=d["name"], backend=d["backend"], spec=IOSpec.from_dict(d["spec"]),
            profiles=ProfileSet.from_dict(d["profiles"]), max_batch_size=int(d["max_batch_size"]),
            tolerances={k: Tolerance(typed(v["atol"], (int, float), "tolerances.%s.atol" % k),
                                     typed(v["rtol"], (int, float), "tolerances.%s.rtol" % k),
                                     typed(v.get("rel_l2"), (int, float, type(None)), "tolerances.%s.rel_l2" % k))
                        for k, v in d["tolerances"].items()},
            versions=Versions.from_dict(d.get("versions", {})), artifact=artifact_from_dict(d.get("artifact", {})),
            config=typed(d.get("config", {}), dict, "config"),
            tensorrt=TensorRTSection.from_dict(d["tensorrt"]) if d.get("tensorrt") else None,
            checks=ChecksSection.from_dict(d.get("checks", {})), tuning=TuningSection.from_dict(d.get("tuning", {})),
            history=tuple(TuneHistoryEntry.from_dict(h) for h in typed(d.get("history", []), list, "history")),
            files=dict(d.get("files", {})),
            runtime_requirements=Requirements.from_dict(d["runtime_requirements"])
            if d.get("runtime_requirements") else None,
            envelope=Envelope.from_dict(typed(d["envelope"], dict, "envelope")) if d.get("envelope") else None,
            pipeline=typed(d.get("pipeline", {}), dict, "pipeline"),
        )

    def save(self, model_dir: Path) -> None:
        replace_file_atomically(Path(model_dir) / MANIFEST, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, model_dir: Path) -> "Manifest":
        path = Path(model_dir) / MANIFEST
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError("%s not found; is %s a model generated by aitune-triton?" % (path, model_dir)) from None
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
            # wrong types anywhere (a list at the top, "spec": 5, "max_batch_size": "abc", deep nesting)
            raise UserError("%s is not a valid manifest (%s: %s); regenerate the model"
                            % (path, type(exc).__name__, str(exc)[:200])) from None
        except OSError as exc:
            raise UserError("cannot read %s: %s" % (path, exc.strerror)) from None


