"""Raw data in, answers out: the user's pre/post-processing hooks served as a Triton ensemble.

A model.py may define, beside ``get_model()`` and ``get_samples()``:

* ``get_preprocess()`` returning ``pre(raw: bytes) -> dict[str, array]``: ONE raw request row
  (UTF-8 text or an encoded image, as the client sent it) to the model's input tensors for that row,
  named like the model's inputs, without the batch axis;
* ``get_postprocess()`` returning ``post(outputs: dict[str, array]) -> dict[str, value]``: ONE row
  of the model's outputs (numpy, no batch axis) to what the client wants (arrays, numbers, ``str``);
* ``get_raw_samples()`` returning raw rows (``bytes`` or ``str``) to record the reference with.

The hooks are row-wise by construction, so ``<name>_pre`` and ``<name>_post`` take the model's
``max_batch_size`` with dynamic batching (any grouping of rows gives the same rows back). ``generate``
runs the hooks and the eager model in process on the raw samples, records the answers (the
ensemble's ``reference.npz``: raw rows as uint8 arrays, so it is read without pickle) and writes
three models beside the served model: the two Python-backend models (``aitune_pipeline.py`` copied
as their ``model.py`` with a copy of the user's model.py, both hashed in their manifests) and
``<name>_pipeline`` (``platform: "ensemble"``) wiring ``raw`` -> pre -> model -> post. The model
stays callable on its own. The configs go through ``triton.render`` (checked against Triton's schema).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch

from aitune_triton.errors import UserError
from aitune_triton.numerics import Tolerance, ToleranceOverride, loosest_float, tolerance_for
from aitune_triton.reference_data import REFERENCE, ReferenceCase, save_reference
from aitune_triton.runtime import PIPELINE_USER_FILE, runtime_source
from aitune_triton.source import _call, load_module, model_folder_on_path
from aitune_triton.spec import IOSpec, call_with_feed, flatten_outputs
from aitune_triton.triton.manifest import Manifest
from aitune_triton.triton.render import config_text, parse_config, write_config
from aitune_triton.triton.tuning_section import TuningSection

HOOKS = ("get_preprocess", "get_postprocess", "get_raw_samples")
RAW = "raw"
DATA_FILE = "aitune_pipeline.json"
USER_FILE = PIPELINE_USER_FILE
STEPS_FILE = "pipeline.json"


@dataclass(frozen=True)
class Hooks:
    """The user's hooks, loaded from model.py."""

    path: Path
    pre: Callable[[bytes], dict]
    post: Callable[[dict], dict]
    raw: tuple[bytes, ...]


@dataclass(frozen=True)
class Recorded:
    """The raw samples run through pre -> eager model -> post in process."""

    raw: tuple[bytes, ...]
    answers: tuple[dict[str, np.ndarray], ...]  # per row, each value with its row axis
    out_types: dict[str, str]  # post output -> numpy dtype name, or "bytes"


def model_names(name: str) -> dict[str, str]:
    return {"pre": name + "_pre", "post": name + "_post", "pipeline": name + "_pipeline"}


def load_hooks(path: Path, timeout_s: float = 0.0, module: ModuleType | None = None) -> Hooks | None:
    """The hooks of model.py at ``path``; None when it defines none of them. ``module``: model.py as
    already imported (``ModelSource.module``), so its top-level code does not run a second time in
    the process; None imports it."""
    with model_folder_on_path(path):  # the hooks may import model.py's siblings, as get_model() may
        return _load_hooks(Path(path), module if module is not None else load_module(path, timeout_s), timeout_s)


def _load_hooks(path: Path, module: ModuleType, timeout_s: float) -> Hooks | None:
    present = [h for h in HOOKS if callable(getattr(module, h, None))]
    if not present:
        return None
    missing = [h for h in HOOKS if h not in present]
    if missing:
        raise UserError("%s: defines %s but not %s; a raw-data pipeline needs all three"
                        % (path, ", ".join(present), ", ".join(missing)))
    pre, post = _call(module, path, "get_preprocess", timeout_s), _call(module, path, "get_postprocess", timeout_s)
    for hook, fn in (("get_preprocess", pre), ("get_postprocess", post)):
        if not callable(fn):
            raise UserError("%s: %s() returned %s; return a function of one row" % (path, hook, type(fn).__name__))
    rows = _call(module, path, "get_raw_samples", timeout_s)
    if isinstance(rows, (str, bytes)) or not isinstance(rows, (list, tuple)) or not rows:
        raise UserError("%s: get_raw_samples() must return a non-empty list of bytes or str rows" % path)
    raw = []
    for i, row in enumerate(rows):
        if not isinstance(row, (str, bytes)) or not row:
            raise UserError("%s: get_raw_samples() row %d is %r; give non-empty bytes (an encoded image) or str"
                            % (path, i, type(row).__name__ if not isinstance(row, (str, bytes)) else row))
        raw.append(row.encode("utf-8") if isinstance(row, str) else bytes(row))
    return Hooks(Path(path), pre, post, tuple(raw))


def _row_array(value: Any, dtype: str | None = None) -> np.ndarray:
    """A hook's value for one row as an array (the served runtime converts the same way)."""
    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    items = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
    flat = np.asarray(items, dtype=object).reshape(-1) if isinstance(value, (str, bytes)) or (
        isinstance(value, (list, tuple)) and value and isinstance(value[0], (str, bytes))) else None
    if dtype == "bytes" or flat is not None:
        return np.array([v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in
                         (flat if flat is not None else np.asarray(items, dtype=object).reshape(-1))], dtype=object)
    arr = np.asarray(value)
    arr = arr.reshape(1) if arr.ndim == 0 else arr
    return arr.astype(np.dtype(dtype), copy=False) if dtype else arr


def _hook(fn: Callable, arg: Any, what: str, path: Path, row: int) -> dict:
    try:
        result = fn(arg)
    except Exception as exc:
        raise UserError("%s: the %s hook failed on raw sample %d: %s: %s"
                        % (path, what, row, type(exc).__name__, exc)) from exc
    if not isinstance(result, dict) or not result:
        raise UserError("%s: the %s hook returned %s for raw sample %d; return a dict of named values"
                        % (path, what, type(result).__name__, row))
    return result


def _np_dtype(data_type: int) -> np.dtype:
    from tritonclient.grpc import model_config_pb2
    from tritonclient.utils import triton_to_np_dtype

    name = model_config_pb2.DataType.Name(data_type)[len("TYPE_"):]
    return np.dtype(triton_to_np_dtype("BYTES" if name == "STRING" else name))


def record(hooks: Hooks, model: torch.nn.Module, spec: IOSpec, model_cfg: Any) -> Recorded:
    """Run the raw samples through pre -> eager model -> post, as the ensemble will."""
    in_types = {t.name: _np_dtype(t.data_type) for t in model_cfg.input}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    answers: list[dict[str, np.ndarray]] = []
    out_types: dict[str, str] = {}
    for i, raw in enumerate(hooks.raw):
        feed = _hook(hooks.pre, raw, "preprocess", hooks.path, i)
        if set(feed) != set(in_types):
            raise UserError("%s: the preprocess hook returned %s for raw sample %d; return the model's inputs %s"
                            % (hooks.path, sorted(feed), i, sorted(in_types)))
        tensors = {k: torch.from_numpy(np.ascontiguousarray(_row_array(v, in_types[k].name)))[None].to(device)
                   for k, v in feed.items()}
        with torch.inference_mode():
            out = call_with_feed(model, spec, tensors)
        row = {name: t.detach().cpu().numpy()[0] for name, t in flatten_outputs(out)}
        answer = _hook(hooks.post, row, "postprocess", hooks.path, i)
        arrays = {k: _row_array(v) for k, v in answer.items()}
        types = {k: "bytes" if a.dtype == object else a.dtype.name for k, a in arrays.items()}
        if out_types and types != out_types:
            raise UserError("%s: the postprocess hook returned %s for raw sample %d but %s for sample 0; return the "
                            "same names and types for every row" % (hooks.path, types, i, out_types))
        out_types = types
        answers.append({k: a[None] for k, a in arrays.items()})
    return Recorded(hooks.raw, tuple(answers), out_types)


def _tensor(msg: Any, name: str, data_type: int, dims: list[int]) -> None:
    msg.name = name
    msg.data_type = data_type
    msg.dims.extend(dims)


def _dims(recorded: Recorded, name: str) -> list[int]:
    shapes = {a[name].shape[1:] for a in recorded.answers}
    first = next(iter(shapes))
    return [d if all(s[i] == d for s in shapes) else -1 for i, d in enumerate(first)]


def _out_type(dtype: str) -> int:
    from tritonclient.grpc import model_config_pb2
    from tritonclient.utils import np_to_triton_dtype

    if dtype == "bytes":
        return model_config_pb2.TYPE_STRING
    return model_config_pb2.DataType.Value("TYPE_" + np_to_triton_dtype(np.dtype(dtype)))


def _python_config(name: str, max_batch_size: int) -> Any:
    from tritonclient.grpc import model_config_pb2

    cfg = model_config_pb2.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    cfg.dynamic_batching.max_queue_delay_microseconds = 0  # row-wise hooks: any grouping of rows is correct
    cfg.instance_group.add(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    return cfg


def _write_step(model_dir: Path, hooks: Hooks, role: str, inputs: list[str], outputs: list[tuple[str, str]],
                cfg: Any) -> None:
    version = model_dir / "1"
    version.mkdir()
    (version / "model.py").write_bytes(runtime_source("aitune_pipeline.py"))
    shutil.copy2(hooks.path, version / USER_FILE)
    from aitune_triton.integrity import sha256_file

    import importlib.metadata as md

    from aitune_triton.triton.pack_env import imported_distributions

    # what the hooks' module imports (tokenizers, Pillow...), as installed here: serving needs them
    # beside torch (pack-env packs them with their requirements)
    needs = {d: md.version(d) for d in imported_distributions(version / USER_FILE)}
    data = {"role": role, "hook": "get_preprocess" if role == "pre" else "get_postprocess",
            "inputs": inputs, "outputs": [{"name": n, "dtype": d} for n, d in outputs],
            "user_sha256": sha256_file(version / USER_FILE),
            "requires": needs}
    (version / DATA_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    write_config(model_dir, config_text(cfg, "Generated by aitune-triton: the %s-processing step of a raw-data "
                                             "pipeline (row-wise, so dynamically batched)." % role))


def answer_tolerances(out_types: dict[str, str], spec: IOSpec,
                      override: ToleranceOverride | None) -> dict[str, Tolerance]:
    """The tolerance of each recorded answer the ensemble must reproduce (text is compared exactly).
    A float answer of any width (numpy float64 from a hook included) carries the model's
    rounding, so it is judged by the loosest float dtype among the model's outputs, with the
    user's override; anything else by its own dtype (integers exactly). A served export, AOTI or
    dynamically batched model differs from the eager recording by exactly that rounding."""
    precision = loosest_float(t.dtype for t in spec.outputs)
    return {k: tolerance_for(precision if np.dtype(d).kind in "fc" else d, override)
            for k, d in out_types.items() if d != "bytes"}


def write_pipeline(hooks: Hooks, model: torch.nn.Module, home: Path, manifest: Manifest,
                   dirs: dict[str, Path], tolerance: ToleranceOverride | None = None) -> Recorded:
    """Write ``<name>_pre``, ``<name>_post`` and ``<name>_pipeline`` into ``dirs`` (staged model
    dirs keyed by role) for the served model in ``home`` described by ``manifest``. ``tolerance``:
    the user's override (``GenerateConfig.tolerance_override``), for the recorded answers."""
    from tritonclient.grpc import model_config_pb2

    model_cfg = parse_config((home / "config.pbtxt").read_text())
    if model_cfg.max_batch_size < 1:
        raise UserError("%s: get_preprocess()/get_postprocess() need a model served with a batch axis (its "
                        "max_batch_size is 0); batch the model's inputs, or drop the hooks" % hooks.path)
    recorded = record(hooks, model, manifest.spec, model_cfg)
    mbs, name = int(model_cfg.max_batch_size), manifest.name
    names = {role: path.name for role, path in dirs.items()}

    pre = _python_config(names["pre"], mbs)
    _tensor(pre.input.add(), RAW, model_config_pb2.TYPE_STRING, [1])
    for t in model_cfg.input:
        _tensor(pre.output.add(), t.name, t.data_type, list(t.dims))
    _write_step(dirs["pre"], hooks, "pre", [RAW], [(t.name, _np_dtype(t.data_type).name) for t in model_cfg.input],
                pre)

    post = _python_config(names["post"], mbs)
    for t in model_cfg.output:
        _tensor(post.input.add(), t.name, t.data_type, list(t.dims))
    for out, dtype in recorded.out_types.items():
        _tensor(post.output.add(), out, _out_type(dtype), _dims(recorded, out))
    _write_step(dirs["post"], hooks, "post", [t.name for t in model_cfg.output], list(recorded.out_types.items()),
                post)

    ens = model_config_pb2.ModelConfig(name=names["pipeline"], platform="ensemble", max_batch_size=mbs)
    _tensor(ens.input.add(), RAW, model_config_pb2.TYPE_STRING, [1])
    for t in post.output:
        _tensor(ens.output.add(), t.name, t.data_type, list(t.dims))
    step = ens.ensemble_scheduling.step.add(model_name=names["pre"], model_version=-1)
    step.input_map[RAW] = RAW
    for t in model_cfg.input:
        step.output_map[t.name] = "pre__" + t.name
    step = ens.ensemble_scheduling.step.add(model_name=name, model_version=-1)
    for t in model_cfg.input:
        step.input_map[t.name] = "pre__" + t.name
    for t in model_cfg.output:
        step.output_map[t.name] = "model__" + t.name
    step = ens.ensemble_scheduling.step.add(model_name=names["post"], model_version=-1)
    for t in model_cfg.output:
        step.input_map[t.name] = "model__" + t.name
    for t in post.output:
        step.output_map[t.name] = t.name
    pipe = dirs["pipeline"]
    (pipe / "1").mkdir()  # Triton wants a version directory for an ensemble; it holds the wiring, hashed
    (pipe / "1" / STEPS_FILE).write_text(json.dumps({"steps": [names["pre"], name, names["post"]]}, indent=2) + "\n")
    write_config(pipe, config_text(ens, "Generated by aitune-triton: raw data -> %s -> %s -> %s."
                                        % (names["pre"], name, names["post"])))
    save_reference(pipe / REFERENCE, [ReferenceCase({RAW: np.frombuffer(raw, dtype=np.uint8)},
                                                    {k: (v.astype("S") if v.dtype == object else v)
                                                     for k, v in answer.items()})
                                      for raw, answer in zip(recorded.raw, recorded.answers, strict=True)])

    role_info = {"model": name, **names}
    for role, model_dir in dirs.items():
        step_manifest = dataclasses.replace(
            manifest, name=model_dir.name, backend="ensemble" if role == "pipeline" else "python", artifact=None,
            tensorrt=None, tuning=TuningSection(), history=(), files={},
            runtime_requirements=None if role == "pipeline" else manifest.runtime_requirements,
            tolerances=answer_tolerances(recorded.out_types, manifest.spec, tolerance)
            if role == "pipeline" else manifest.tolerances,
            pipeline={"role": role, **role_info})
        step_manifest.sealed(model_dir).save(model_dir)
    return recorded

