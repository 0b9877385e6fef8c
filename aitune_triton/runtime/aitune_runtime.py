"""The pure half of the served runtime: the per-model data, what the serving side must provide, and
the request checks. Copied verbatim next to ``model.py`` into every version directory.

It imports neither torch nor Triton nor aitune_triton (Triton's stub only has the model directory and
whatever Python environment it runs in), so it is unit-tested directly and can tell a serving
environment without torch what it lacks. Written for Python 3.8+ (the oldest stub Python in use).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

DATA_FILE = "aitune_model.json"
DATA_SCHEMA = 1
FORMATS = ("aoti", "export", "eager")
# how an artifact binds to the torch that serves it
TORCH_EXACT, TORCH_SCHEMA, TORCH_MIN = "exact", "export-schema", "minimum"
PACK_ENV_HINT = "aitune-triton pack-env REPO --model %s"
# what a host lacking an AOTInductor package's CPU or GPU can do instead
PORTABLE_FIX = "regenerate it on such a host or with `--fallback-format export` / `--portable` (any host)"
# x86 /proc/cpuinfo flags of instruction-set extensions a C++ compiler emits code for on its own: inductor
# compiles an AOTInductor package (the CPU kernels and the wrapper, CUDA packages too) with -march=native.
# Extensions reached only through intrinsics (aes, sha_ni, vaes, adx...) and AMD-only ones (sse4a, xop, fma4)
# are left out: they would refuse packages on hosts that run them fine (an AMD-built one on every Intel host)
_ISA_FLAG = re.compile(r"^(avx|amx)|^(sse3|ssse3|sse4_1|sse4_2|fma|f16c|bmi1|bmi2|popcnt|abm|movbe|gfni)$")
# torch.backends.cpu.get_cpu_capability() names, weakest first (x86)
_CAPABILITY_RANK = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}

Range = Tuple[int, Optional[int]]


class DataError(ValueError):
    """The data file is missing, malformed, or written by an incompatible generator."""


def release(version: str) -> Tuple[int, int, int]:
    """``(major, minor, patch)`` of a torch version string: ``2.13.0+cpu``, ``2.5.0a0+e000cf0.nv24.10``."""
    m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if not m:
        raise DataError("not a version: %r" % (version,))
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _major_minor(version: Optional[str]) -> Optional[Tuple[int, int]]:
    """``(13, 0)`` of ``"13.0"``; None for None or anything else (``"unknown"``)."""
    m = re.match(r"\s*(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def isa_flags(flags: Iterable[str]) -> Tuple[str, ...]:
    """The instruction-set extensions among ``flags`` (``/proc/cpuinfo`` names), sorted."""
    return tuple(sorted({f for f in flags if _ISA_FLAG.match(f)}))


def cpu_flags_here(path: str = "/proc/cpuinfo") -> Optional[FrozenSet[str]]:
    """The flags of this host's CPU (Linux), or None where they cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class HostFacts:
    """What the serving host offers an AOTInductor package: gathered by ``model.py`` in the stub and
    passed in here, so the check is testable for any host. ``cpu_flags`` None: unknown (not Linux);
    ``cpu_capability``: torch's ``get_cpu_capability()``."""

    machine: str
    cpu_flags: Optional[FrozenSet[str]] = None
    cpu_capability: Optional[str] = None
    cuda: Optional[str] = None  # the torch build's CUDA
    gpu: Optional[str] = None  # the GPU the instance runs on: its name and compute capability
    compute_capability: Optional[str] = None


@dataclass(frozen=True)
class Requirements:
    """What the serving side needs, recorded at generate time (``runtime_requirements`` in the manifest).

    ``torch_rule`` says how the artifact binds to torch: ``exact`` (an AOTInductor package: the same
    torch release that compiled it), ``export-schema`` (an ExportedProgram: any torch whose
    ``torch.export`` serialization schema has the same major version, ``export_schema_major``), or
    ``minimum`` (the user's module and ``state_dict``: any torch from ``torch_min``).

    An AOTInductor package is also machine code for the host that compiled it: ``machine``
    (``x86_64``), ``cpu_isa`` (the vector ISA inductor compiled its kernels for, as the package's own
    ``AOTI_CPU_ISA``), ``cpu_flags`` (the generating CPU's instruction-set extensions: it was compiled
    with ``-march=native``) and, on GPU, ``compute_capability``. The other formats leave them empty.
    """

    python: str
    torch: str
    torch_rule: str
    torch_min: str
    cuda: Optional[str]
    triton_min: str
    export_schema_major: Optional[int] = None
    machine: Optional[str] = None
    cpu_isa: Optional[str] = None
    cpu_flags: Tuple[str, ...] = ()
    compute_capability: Optional[str] = None

    def __post_init__(self) -> None:
        if self.torch_rule not in (TORCH_EXACT, TORCH_SCHEMA, TORCH_MIN):
            raise DataError("unknown torch_rule %r" % (self.torch_rule,))
        release(self.torch)
        release(self.torch_min)

    def to_dict(self) -> dict:
        return {"python": self.python, "torch": self.torch, "torch_rule": self.torch_rule, "torch_min": self.torch_min,
                "cuda": self.cuda, "triton_min": self.triton_min, "export_schema_major": self.export_schema_major,
                "machine": self.machine, "cpu_isa": self.cpu_isa, "cpu_flags": list(self.cpu_flags),
                "compute_capability": self.compute_capability}

    @classmethod
    def from_dict(cls, d: dict) -> "Requirements":
        flags = d.get("cpu_flags") or []
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise DataError("requirements.cpu_flags must be a list of strings, got %r" % (flags,))
        return cls(python=str(d["python"]), torch=str(d["torch"]), torch_rule=str(d["torch_rule"]),
                   torch_min=str(d["torch_min"]), cuda=d.get("cuda"), triton_min=str(d["triton_min"]),
                   export_schema_major=d.get("export_schema_major"), machine=d.get("machine"),
                   cpu_isa=d.get("cpu_isa"), cpu_flags=tuple(flags), compute_capability=d.get("compute_capability"))

    def host_needs(self, flags: bool = True) -> Optional[str]:
        """What the artifact needs of the host's CPU and GPU, in words (None: nothing beyond torch);
        ``flags``: list the CPU's instruction-set extensions too."""
        parts = []
        if self.cpu_isa or self.cpu_flags or self.machine:
            cpu = "%s CPUs" % (self.machine or "")
            if self.cpu_isa:
                cpu += " with %s" % self.cpu_isa
            if flags and self.cpu_flags:
                cpu += " (%s)" % " ".join(self.cpu_flags)
            parts.append(cpu.strip())
        if self.compute_capability:
            parts.append("GPUs of compute capability %s%s" % (self.compute_capability,
                                                             " with CUDA %s" % self.cuda if self.cuda else ""))
        return " and ".join(parts) or None

    def host_problem(self, model: str, host: HostFacts, on_gpu: bool = False) -> Optional[str]:
        """One line naming what ``host`` lacks of what the artifact was compiled for, and the fix; None
        when it has everything (or nothing was recorded: export and eager artifacts)."""
        lacks = None
        if self.machine and host.machine and self.machine != host.machine:
            lacks = "this host is %s" % host.machine
        elif self.cpu_flags and host.cpu_flags is not None:
            missing = [f for f in self.cpu_flags if f not in host.cpu_flags]
            if missing:
                lacks = "this host's CPU lacks %s%s" % (" ".join(missing[:3]), " and %d more" % (len(missing) - 3)
                                                         if len(missing) > 3 else "")
        elif self.cpu_isa and host.cpu_flags is None and host.cpu_capability in _CAPABILITY_RANK:
            wanted = self.cpu_isa.split()[0].upper()
            if _CAPABILITY_RANK.get(wanted, 0) > _CAPABILITY_RANK[host.cpu_capability or "DEFAULT"]:
                lacks = "this host's CPU supports only %s" % host.cpu_capability
        if lacks is None and on_gpu and self.compute_capability and host.compute_capability \
                and host.compute_capability != self.compute_capability:
            lacks = "%s has compute capability %s" % (host.gpu or "this GPU", host.compute_capability)
        if lacks is None and on_gpu and _major_minor(self.cuda) and _major_minor(host.cuda) \
                and _major_minor(self.cuda) != _major_minor(host.cuda):
            lacks = "the stub's torch is built for CUDA %s" % host.cuda
        if lacks is None:
            return None
        return "model %s: its AOTInductor package needs %s but %s: %s" % (
            model, self.host_needs(flags=False), lacks, PORTABLE_FIX)

    def torch_wanted(self) -> str:
        """The torch this artifact loads with, in words."""
        if self.torch_rule == TORCH_EXACT:
            return "torch %s.%s.%s" % release(self.torch)
        if self.torch_rule == TORCH_SCHEMA:
            return "a torch whose torch.export schema major is %s (e.g. torch %s.%s)" % (
                self.export_schema_major, *release(self.torch)[:2])
        return "torch >= %s" % self.torch_min

    def fix(self, model: str) -> str:
        return ("serve it from a Triton `-pyt-python-py3` image (or an image with Python %s and %s%s installed), or "
                "pack the environment with `%s`" % (self.python, self.torch_wanted(),
                                                   " for CUDA %s" % self.cuda if self.cuda else "",
                                                   PACK_ENV_HINT % model))

    def problem(self, model: str, python: str, torch_version: Optional[str], export_schema: Optional[int] = None,
                cuda_available: bool = False, on_gpu: bool = False) -> Optional[str]:
        """One line naming what the serving environment lacks and the fix, or None when it fits."""
        if torch_version is None:
            return "model %s needs %s but the stub's Python %s has no torch: %s" % (
                model, self.torch_wanted(), python, self.fix(model))
        have = release(torch_version)
        mismatch = None
        if self.torch_rule == TORCH_EXACT and have != release(self.torch):
            mismatch = "its AOTInductor package loads only with the torch that compiled it"
        elif self.torch_rule == TORCH_SCHEMA and export_schema is not None and self.export_schema_major is not None \
                and export_schema != self.export_schema_major:
            mismatch = "its ExportedProgram was saved with torch.export schema %d, this torch reads schema %d" % (
                self.export_schema_major, export_schema)
        elif have < release(self.torch_min):
            mismatch = "it was built for torch >= %s" % self.torch_min
        if mismatch:
            return "model %s needs %s (%s) but the stub has torch %s: %s" % (
                model, self.torch_wanted(), mismatch, torch_version, self.fix(model))
        if on_gpu and not cuda_available:
            return "model %s runs on GPU instances but the stub's torch %s sees no CUDA device: %s" % (
                model, torch_version, self.fix(model))
        return None

    def python_note(self, python: str) -> Optional[str]:
        """A warning (not an error: the artifact does not depend on it) when the stub's Python differs."""
        if python.split(".")[:2] != self.python.split(".")[:2]:
            return "generated with Python %s, served with Python %s" % (self.python, python)
        return None


@dataclass(frozen=True)
class InputBinding:
    """One model input: how it reaches ``forward`` and the sizes each axis accepts (``None``: unbounded)."""

    name: str
    dtype: str
    kind: str  # "arg" or "kwarg"
    key: object  # positional index or keyword
    batched: bool
    ranges: Tuple[Range, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "kind": self.kind, "key": self.key, "batched": self.batched,
                "ranges": [list(r) for r in self.ranges]}

    @classmethod
    def from_dict(cls, d: dict) -> "InputBinding":
        if d["kind"] not in ("arg", "kwarg"):
            raise DataError("input %r: kind must be arg or kwarg, got %r" % (d.get("name"), d["kind"]))
        return cls(str(d["name"]), str(d["dtype"]), d["kind"], int(d["key"]) if d["kind"] == "arg" else str(d["key"]),
                   bool(d["batched"]), tuple((int(lo), None if hi is None else int(hi)) for lo, hi in d["ranges"]))


@dataclass(frozen=True)
class ModelData:
    """Everything the served ``model.py`` knows about its model (``aitune_model.json``)."""

    generator: str
    format: str
    artifact_device: str
    files: Dict[str, str]  # role ("aoti", "export", "source", "state_dict") -> file name in the version dir
    sha256: Dict[str, str]  # file name -> hex digest, checked before loading
    max_batch_size: int
    inputs: Tuple[InputBinding, ...]
    outputs: Tuple[Tuple[str, str], ...]  # name, dtype, in the order forward()'s outputs flatten
    pad_to_buckets: Optional[bool]  # pad a batch up to the next captured size; None: on CUDA only
    cuda_graphs: bool
    graph_batches: Tuple[int, ...]
    max_graphs: int
    requirements: Requirements
    flat_io: bool = False  # an exported artifact taking the inputs in spec order and returning a flat tuple
    max_detections: int = 0  # eager: forward returns one dict per image, padded to this many (aitune_eager)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise DataError("unknown artifact format %r" % (self.format,))
        if self.artifact_device not in ("cpu", "cuda"):
            raise DataError("unknown artifact device %r" % (self.artifact_device,))
        for name in list(self.files.values()) + list(self.sha256):
            if not name or os.path.basename(name) != name or name.startswith("."):
                raise DataError("artifact file %r must be a plain file name in the version directory" % (name,))
        missing = [f for f in self.files.values() if f not in self.sha256]
        if missing:
            raise DataError("no SHA-256 recorded for %s" % ", ".join(missing))
        if self.max_batch_size < 0:
            raise DataError("max_batch_size must be >= 0, got %d" % self.max_batch_size)
        if self.max_detections < 0:
            raise DataError("max_detections must be >= 0, got %d" % self.max_detections)

    def to_dict(self) -> dict:
        d = {"schema": DATA_SCHEMA, "generator": self.generator, "format": self.format,
             "artifact_device": self.artifact_device, "files": dict(self.files), "sha256": dict(self.sha256),
             "max_batch_size": self.max_batch_size, "inputs": [i.to_dict() for i in self.inputs],
             "outputs": [list(o) for o in self.outputs], "pad_to_buckets": self.pad_to_buckets,
             "cuda_graphs": self.cuda_graphs, "graph_batches": list(self.graph_batches),
             "max_graphs": self.max_graphs, "requirements": self.requirements.to_dict(), "flat_io": self.flat_io}
        if self.max_detections:  # detectors only: other data files stay as they were
            d["max_detections"] = self.max_detections
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelData":
        if d.get("schema") != DATA_SCHEMA:
            raise DataError("data schema %r is not supported (expected %d): regenerate the model"
                            % (d.get("schema"), DATA_SCHEMA))
        try:
            return cls(
                generator=str(d["generator"]), format=str(d["format"]), artifact_device=str(d["artifact_device"]),
                files={str(k): str(v) for k, v in d["files"].items()},
                sha256={str(k): str(v) for k, v in d["sha256"].items()},
                max_batch_size=int(d["max_batch_size"]),
                inputs=tuple(InputBinding.from_dict(i) for i in d["inputs"]),
                outputs=tuple((str(n), str(t)) for n, t in d["outputs"]),
                pad_to_buckets=d["pad_to_buckets"], cuda_graphs=bool(d["cuda_graphs"]),
                graph_batches=tuple(int(b) for b in d["graph_batches"]), max_graphs=int(d["max_graphs"]),
                requirements=Requirements.from_dict(d["requirements"]), flat_io=bool(d.get("flat_io", False)),
                max_detections=int(d.get("max_detections", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError("malformed %s: %s: %s" % (DATA_FILE, type(exc).__name__, exc)) from exc

    @classmethod
    def load(cls, version_dir: str) -> "ModelData":
        path = os.path.join(version_dir, DATA_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, ValueError) as exc:
            raise DataError("cannot read %s: %s" % (path, exc)) from exc
        return cls.from_dict(raw)

    @property
    def input_names(self) -> List[str]:
        return [i.name for i in self.inputs]


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_problem(version_dir: str, data: ModelData) -> Optional[str]:
    """The first artifact file that is missing or whose SHA-256 differs from the recorded one, in one line.

    Checked before anything is deserialised: a swapped or truncated file is refused, not loaded."""
    for name, expected in sorted(data.sha256.items()):
        path = os.path.join(version_dir, name)
        if not os.path.isfile(path):
            return "artifact %s is missing from %s: regenerate the model" % (name, version_dir)
        found = sha256_file(path)
        if found != expected:
            return ("artifact %s in %s does not match its recorded SHA-256 (expected %s..., found %s...): it was "
                    "modified or truncated; regenerate the model or restore the file"
                    % (name, version_dir, expected[:12], found[:12]))
    return None


def shape_problem(binding: InputBinding, shape: Sequence[int]) -> Optional[str]:
    """Why a request tensor of ``shape`` does not fit ``binding``'s ranges (and how to widen them), or None.

    A scalar input of a model without a batch axis arrives as ``[1]`` (Triton has no scalar tensors)."""
    if not binding.ranges and tuple(shape) == (1,):
        return None
    if len(shape) != len(binding.ranges):
        return "input %r has shape %s, the model takes rank %d" % (binding.name, list(shape), len(binding.ranges))
    for axis, (size, (lo, hi)) in enumerate(zip(shape, binding.ranges)):
        if size < lo or (hi is not None and size > hi):
            if lo == hi:
                return "input %r axis %d is %d, the model takes %d" % (binding.name, axis, size, lo)
            if axis == 0 and binding.batched:
                how = "widen it with --max-batch-size at generate"
            else:
                how = "widen it with --axis %s:%d=LO..HI (axis_ranges in get_config()) at generate" % (
                    binding.name, axis)
            return "input %r axis %d is %d, the model takes %d..%s (%s)" % (
                binding.name, axis, size, lo, "" if hi is None else hi, how)
    return None


def pad_target(graph_batches: Sequence[int], total: int) -> int:
    """The smallest captured batch size that holds ``total`` rows, or ``total`` when none does."""
    return next((b for b in graph_batches if b >= total), total)


def instance_threads(config: dict, cpu_count: int) -> int:
    """Torch threads per CPU instance: the instances share the cores (oversubscription made 2 instances
    5-50x slower than 1 on 2 cores)."""
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])
                    if g.get("kind") == "KIND_CPU") or 1
    return max(1, cpu_count // instances)


def config_parameters(config: dict) -> Dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
