"""Load the user's ``model.py`` and turn every way it can be wrong into a one-line ``UserError``.

The contract: ``get_model() -> torch.nn.Module``, ``get_samples() -> iterable of samples``,
optional ``get_config() -> GenerateConfig``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import torch
from torch.utils import _pytree as pytree

from aitune_triton.config import GenerateConfig
from aitune_triton.errors import UserError
from aitune_triton.runtime.aitune_eager import COUNT_OUTPUT, PaddedDetections, per_image_keys
from aitune_triton.spec import Sample, normalize_sample
from aitune_triton.user_code import guarded


@dataclass(frozen=True)
class ModelSource:
    path: Path
    model: torch.nn.Module
    samples: tuple[Sample, ...]
    outputs: tuple[Any, ...]
    config: GenerateConfig | None
    notes: tuple[str, ...] = ()  # how the model is served where it differs from what forward returns
    # the imported model.py, for its pipeline hooks: importing it again would run its top-level code again
    module: ModuleType | None = field(default=None, compare=False, repr=False)


def _user_frame(exc: BaseException, path: Path, outside: str = "import") -> str:
    """The line of the user's own file where ``exc`` came from, for a one-line message; ``outside``
    when no frame of that file is on the stack (torch raised for the call itself)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    if isinstance(exc, SyntaxError) and exc.lineno:
        return "line %d" % exc.lineno
    line = frames[-1].lineno if frames else None
    return outside if line is None else "line %d" % line


def _fail(path: Path, problem: str) -> UserError:
    return UserError("%s: %s" % (path, problem))


@contextlib.contextmanager
def model_folder_on_path(path: Path) -> Iterator[None]:
    """model.py's folder first on ``sys.path`` while its code runs, as when it is run as a script:
    model.py may import its siblings at the top or inside ``get_model()`` (``from helper import Net``).
    Removed again after, so one model's folder does not shadow another's modules."""
    folder = str(Path(path).resolve().parent)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # model.py removed it itself
            sys.path.remove(folder)


def load_module(path: Path, timeout_s: float = 0.0) -> ModuleType:
    """Import model.py under ``user_code.guarded``: an exit or a run past ``timeout_s`` (0: no limit)
    is a one-line ``UserError``.

    The module is registered in ``sys.modules`` under a name unique to this load, as an import
    would: classes defined in model.py name it as their ``__module__``, and ``@dataclass`` (under
    ``from __future__ import annotations``), ``typing.get_type_hints`` and pickle look it up there.
    It stays registered while the process lives, as imported modules do; a failed import removes it."""
    path = Path(path).resolve()
    if not path.exists():
        raise UserError("%s: file not found; pass the path to your model.py" % path)
    if not path.is_file() or path.suffix != ".py":
        raise _fail(path, "not a Python file; pass a .py file that defines get_model() and get_samples()")
    name = "aitune_user_model_%s" % uuid.uuid4().hex[:8]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise _fail(path, "cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        _exec_module(spec.loader, module, path, timeout_s)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _exec_module(loader: Any, module: ModuleType, path: Path, timeout_s: float) -> None:
    """Run model.py's top-level code; its errors as one-line ``UserError``s with the user's line."""
    try:
        with model_folder_on_path(path), guarded(path, "while importing", timeout_s):
            loader.exec_module(module)
    except UserError:
        raise
    except SyntaxError as exc:
        raise _fail(path, "syntax error at line %s: %s" % (exc.lineno, exc.msg)) from exc
    except Exception as exc:  # the user's import-time error, shown with their own line
        raise _fail(path, "import failed at %s: %s: %s" % (_user_frame(exc, path), type(exc).__name__, exc)) from exc


def _raised(path: Path, fn: str, exc: Exception) -> UserError:
    """``fn()`` of model.py raised ``exc``: one line naming the function and the user's line."""
    return _fail(path, "%s() raised at %s: %s: %s" % (fn, _user_frame(exc, path), type(exc).__name__, exc))


def _call(module, path: Path, fn: str, timeout_s: float = 0.0) -> Any:
    try:
        with guarded(path, "in %s()" % fn, timeout_s):
            return getattr(module, fn)()
    except UserError:
        raise
    except Exception as exc:
        raise _raised(path, fn, exc) from exc


def _sample_list(path: Path, raw: Any, timeout_s: float) -> list:
    """What ``get_samples()`` returned, as a list. A generator runs the user's code only now, so
    consuming it is guarded like a call (its error names get_samples, not "internal error"), and only
    ``iter()`` failing means "not iterable" (a TypeError from the generator's body is the user's
    error). One tensor is iterable too, but its rows are not the samples the user meant: refused."""
    if isinstance(raw, torch.Tensor):
        raise _fail(path, "get_samples() returned one tensor, whose rows would each be taken as a sample; return a "
                          "list of samples, e.g. [x] (several batch sizes are best: [x[:1], x])")
    try:
        items = iter(raw)
    except TypeError:
        raise _fail(path, "get_samples() returned a %s; return a list (or iterable) of samples"
                    % type(raw).__name__) from None
    try:
        with guarded(path, "in get_samples()", timeout_s):
            return list(items)
    except UserError:
        raise
    except Exception as exc:
        raise _raised(path, "get_samples", exc) from exc


def _structure_hint(raw: list) -> str:
    """For a sample that nests tensors in a list/tuple/dict argument (torchvision detectors take
    ``images: list[Tensor]``): how to make the model take tensors."""
    for sample in raw:
        values = list(sample.values()) if isinstance(sample, dict) else list(sample) \
            if isinstance(sample, (tuple, list)) else []
        if isinstance(sample, (tuple, list)) and len(sample) == 2 and isinstance(sample[1], dict):
            values = list(sample[0]) + list(sample[1].values())
        if any(isinstance(v, (list, tuple, dict)) for v in values):
            return ("; forward() takes a list/dict of tensors: wrap the model in an nn.Module whose forward takes "
                    "tensors (e.g. one batched image tensor) and builds the list inside, and return that from "
                    "get_model(); it may return one dict of tensors per image (served padded, "
                    "GenerateConfig.max_detections)")
    return ""


def _list_hint(model: torch.nn.Module, raw: Any) -> str:
    """For a sample written as a plain list that forward() could not take as separate arguments:
    how to pass a list of images as one argument (torchvision detectors take ``images``)."""
    if not isinstance(raw, list) or len(raw) < 2:
        return ""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return ""
    if len(params) >= len(raw) or any(p.kind is p.VAR_POSITIONAL for p in
                                      inspect.signature(model.forward).parameters.values()):
        return ""
    return ("; the sample is a plain list of %d tensors, passed as %d positional arguments, but forward() takes %d "
            "(%s): for a list of images as one argument, give them as one batched tensor (torch.stack(images); "
            "a detector iterates it like a list)" % (len(raw), len(raw), len(params),
                                                     ", ".join(p.name for p in params)))


def _per_image_outputs(path: Path, model: torch.nn.Module, samples: tuple[Sample, ...], outputs: list[Any],
                       max_detections: int | None) -> tuple[torch.nn.Module, list[Any], tuple[str, ...]]:
    """A model returning one dict per image (torchvision detection style: ``boxes`` [n_i, 4],
    ``scores`` [n_i], ... with n_i varying per image) is served batched: wrapped in
    ``PaddedDetections``, which pads each field to ``max_detections`` rows and adds
    ``num_detections``. One dict per image means: the list is as long as the batch of every sample,
    and the samples' batches differ (or ``max_detections`` is declared), so a fixed tuple of
    per-head dicts is not taken for detections. Other models are returned as they are."""
    keys = [per_image_keys(o) for o in outputs]
    if keys[0] is None:
        return model, outputs, ()
    # one dict per image: the list follows the batch (a tuple of per-head dicts of a fixed length does not)
    batches = [s.flat()[0].shape[0] if s.flat() and s.flat()[0].dim() else None for s in samples]
    follows = all(len(o) == b for o, b in zip(outputs, batches, strict=True))
    if not follows or (len(set(batches)) < 2 and not max_detections):
        return model, outputs, ()
    if any(k != keys[0] for k in keys):
        raise _fail(path, "forward() returns one dict per image but with keys %s for sample 0 and %s for another; "
                          "return the same keys for every image" % (keys[0], next(k for k in keys if k != keys[0])))
    if COUNT_OUTPUT in keys[0]:
        raise _fail(path, "forward() returns one dict per image with a key %r, the name of the count output added "
                          "when serving them batched; rename that key" % COUNT_OUTPUT)
    seen = max(int(item[keys[0][0]].shape[0]) for out in outputs for item in out)
    top = max_detections or max(seen, 1)
    wrapped = PaddedDetections(model, top).eval()
    with torch.inference_mode():
        padded = [wrapped(*s.args, **s.kwargs) for s in samples]
    note = ("forward() returns one dict per image (%s): served batched, each field padded to %d rows per image "
            "(%s) with %s [batch] counting the real ones" % (
                ", ".join(keys[0]), top, "GenerateConfig.max_detections" if max_detections else
                "the most the samples returned; set GenerateConfig(max_detections=N) to your model's limit, more "
                "are cut", COUNT_OUTPUT))
    return wrapped, padded, (note,)


def _refuse_cache(path: Path, output: Any) -> None:
    """A generation cache (transformers' ``DynamicCache``, ``past_key_values``) cannot be served as
    tensors; the fix is a flag on the model, which the generic "not a tensor" error does not say."""
    leaves = pytree.tree_leaves(output, is_leaf=lambda x: type(x).__name__.endswith("Cache"))
    cache = next((leaf for leaf in leaves if type(leaf).__name__.endswith("Cache")), None)
    if cache is not None:
        raise _fail(path, "forward() returns a %s (a generation cache, past_key_values), which cannot be served; "
                          "set use_cache=False in get_model() (e.g. GPT2Config(use_cache=False) or "
                          "model.config.use_cache = False), or wrap the model to return only the tensors you need"
                    % type(cache).__name__)


def load_model_source(path: Path, max_detections: int | None = None, timeout_s: float = 0.0) -> ModelSource:
    """Import model.py, fetch model/samples/config and run the model once per sample.
    ``max_detections`` overrides ``get_config()``'s for a model returning one dict per image.

    ``timeout_s`` (0: none) limits the import, ``get_samples()`` and ``get_config()``; ``get_model()``
    and the forward passes may legitimately take long (downloads, big models) and are not limited.
    Every call into model.py turns ``sys.exit``/``os._exit`` into a ``UserError``, and runs with
    model.py's folder on ``sys.path`` (``model_folder_on_path``)."""
    path = Path(path).resolve()
    with model_folder_on_path(path):
        return _load_model_source(path, max_detections, timeout_s)


def _load_model_source(path: Path, max_detections: int | None, timeout_s: float) -> ModelSource:
    module = load_module(path, timeout_s)
    for fn in ("get_model", "get_samples"):
        if not callable(getattr(module, fn, None)):
            raise _fail(path, "no %s() function; model.py must define get_model() and get_samples()" % fn)
    model = _call(module, path, "get_model")
    if not isinstance(model, torch.nn.Module):
        raise _fail(path, "get_model() returned a %s, not a torch.nn.Module" % type(model).__name__)
    raw = _sample_list(path, _call(module, path, "get_samples", timeout_s), timeout_s)
    if not raw:
        raise _fail(path, "get_samples() returned no samples; return at least one (several batch sizes are best)")
    try:
        samples = tuple(normalize_sample(r, i) for i, r in enumerate(raw))
    except UserError as exc:
        raise _fail(path, str(exc) + _structure_hint(raw)) from None
    config = None
    if hasattr(module, "get_config"):
        config = _call(module, path, "get_config", timeout_s)
        if isinstance(config, dict):
            config = GenerateConfig.from_dict(config)
        if not isinstance(config, GenerateConfig):
            raise _fail(path, "get_config() returned a %s; return aitune_triton.GenerateConfig(...)"
                        % type(config).__name__)
    model.eval()
    outputs = []
    with torch.inference_mode():
        for i, s in enumerate(samples):
            try:
                with guarded(path, "in forward() on sample %d" % i):
                    outputs.append(model(*s.args, **s.kwargs))
            except UserError:
                raise
            except Exception as exc:
                where = _user_frame(exc, path, outside="")
                raise _fail(path, "forward() raised on sample %d in forward%s: %s: %s%s"
                            % (i, " at " + where if where else "", type(exc).__name__, exc,
                               _list_hint(model, raw[i]))) from exc
        _refuse_cache(path, outputs[0])
    model, outputs, notes = _per_image_outputs(path, model, samples, outputs, max_detections or (
        config.max_detections if config else None))
    return ModelSource(path, model, samples, tuple(outputs), config, notes, module)
