"""Load the user's ``model.py`` and turn every way it can be wrong into a one-line ``UserError``.

The contract: ``get_model() -> torch.nn.Module``, ``get_samples() -> iterable of samples``,
optional ``get_config() -> GenerateConfig``.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree

from aitune_triton.config import GenerateConfig
from aitune_triton.errors import UserError
from aitune_triton.spec import Sample, normalize_sample
from aitune_triton.user_code import guarded


@dataclass(frozen=True)
class ModelSource:
    path: Path
    model: torch.nn.Module
    samples: tuple[Sample, ...]
    outputs: tuple[Any, ...]
    config: GenerateConfig | None


def _user_frame(exc: BaseException, path: Path) -> str:
    """The line of the user's own file where ``exc`` came from, for a one-line message."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    if isinstance(exc, SyntaxError) and exc.lineno:
        return "line %d" % exc.lineno
    line = frames[-1].lineno if frames else None
    return "import" if line is None else "line %d" % line


def _fail(path: Path, problem: str) -> UserError:
    return UserError("%s: %s" % (path, problem))


def load_module(path: Path, timeout_s: float = 0.0):
    """Import model.py under ``user_code.guarded``: an exit or a run past ``timeout_s`` (0: no limit)
    is a one-line ``UserError``."""
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
    sys.path.insert(0, str(path.parent))
    try:
        with guarded(path, "while importing", timeout_s):
            spec.loader.exec_module(module)
    except UserError:
        raise
    except SyntaxError as exc:
        raise _fail(path, "syntax error at line %s: %s" % (exc.lineno, exc.msg)) from exc
    except Exception as exc:  # the user's import-time error, shown with their own line
        raise _fail(path, "import failed at %s: %s: %s" % (_user_frame(exc, path), type(exc).__name__, exc)) from exc
    finally:
        sys.path.remove(str(path.parent))
    return module


def _call(module, path: Path, fn: str, timeout_s: float = 0.0) -> Any:
    try:
        with guarded(path, "in %s()" % fn, timeout_s):
            return getattr(module, fn)()
    except UserError:
        raise
    except Exception as exc:
        raise _fail(path, "%s() raised at %s: %s: %s" % (fn, _user_frame(exc, path), type(exc).__name__, exc)) from exc


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
                    "get_model()")
    return ""


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


def load_model_source(path: Path, timeout_s: float = 0.0) -> ModelSource:
    """Import model.py, fetch model/samples/config and run the model once per sample.

    ``timeout_s`` (0: none) limits the import, ``get_samples()`` and ``get_config()``; ``get_model()``
    and the forward passes may legitimately take long (downloads, big models) and are not limited.
    Every call into model.py turns ``sys.exit``/``os._exit`` into a ``UserError``."""
    path = Path(path).resolve()
    module = load_module(path, timeout_s)
    for fn in ("get_model", "get_samples"):
        if not callable(getattr(module, fn, None)):
            raise _fail(path, "no %s() function; model.py must define get_model() and get_samples()" % fn)
    model = _call(module, path, "get_model")
    if not isinstance(model, torch.nn.Module):
        raise _fail(path, "get_model() returned a %s, not a torch.nn.Module" % type(model).__name__)
    raw = _call(module, path, "get_samples", timeout_s)
    try:
        with guarded(path, "in get_samples()", timeout_s):  # a generator runs the user's code now
            raw = list(raw)
    except TypeError:
        raise _fail(path, "get_samples() returned a %s; return a list (or iterable) of samples"
                    % type(raw).__name__) from None
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
            except Exception as exc:
                raise _fail(path, "forward() raised on sample %d at %s: %s: %s"
                            % (i, _user_frame(exc, path), type(exc).__name__, exc)) from exc
        _refuse_cache(path, outputs[0])
    return ModelSource(path, model, samples, tuple(outputs), config)
