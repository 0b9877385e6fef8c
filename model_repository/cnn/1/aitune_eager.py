"""The eager format rebuilt from the user's module: its ``state_dict`` and per-image detections.

Copied verbatim next to ``model.py``; imports torch only. The generator uses the same code (the
check of the eager artifact, the padding applied while recording the model), so what is checked at
generate time is what Triton serves.
"""

import importlib.util
import pickle
import sys
import uuid

import torch

COUNT_OUTPUT = "num_detections"


def import_user_module(path):
    """The user's copied model.py as a module, registered in ``sys.modules`` under a name unique to
    this load, as an import would: classes defined there name it as their ``__module__``, and
    ``@dataclass`` (under ``from __future__ import annotations``), ``typing.get_type_hints`` and
    pickle look it up there. A failed import removes it again."""
    name = "aitune_user_model_%s" % uuid.uuid4().hex[:8]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError("cannot import %s" % path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_state_dict(path, device):
    """The eager format's ``state_dict`` file, always with ``weights_only=True`` (no pickle code runs).
    A quantized model (``torch.ao.quantization.quantize_dynamic``) keeps packed parameters there,
    TorchScript objects such as an LSTM's ``CellParamsBase``: for such a file ``torch.ScriptObject``
    is allowed too, and nothing else. The caller has checked the file's SHA-256 first."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        allowed = getattr(torch.serialization, "safe_globals", None)  # scoped form: torch 2.5 on
        if allowed is None:
            torch.serialization.add_safe_globals([torch.ScriptObject])
            return torch.load(path, map_location=device, weights_only=True)
        with allowed([torch.ScriptObject]):
            return torch.load(path, map_location=device, weights_only=True)


def per_image_keys(output, check_sizes=True):
    """The keys when ``output`` is a list (or tuple) of dicts of tensors, one per image, all with the
    same keys, each tensor's axis 0 the image's detections (torchvision detection style); else None.
    ``check_sizes=False`` skips comparing the sizes (symbolic while torch.export traces)."""
    if not isinstance(output, (list, tuple)) or not output or not all(isinstance(o, dict) for o in output):
        return None
    keys = list(output[0])
    for item in output:
        if list(item) != keys or not keys:
            return None
        values = list(item.values())
        if not all(isinstance(v, torch.Tensor) and v.dim() >= 1 for v in values):
            return None
        if check_sizes and len({int(v.shape[0]) for v in values}) != 1:
            return None
    return keys


class PaddedDetections(torch.nn.Module):
    """One dict per image (``boxes`` [n_i, 4], ``scores`` [n_i], ...) as batched tensors: each field
    padded with zeros (or cut) to ``max_detections`` rows, so ``boxes`` is [batch, max_detections, 4],
    plus ``num_detections`` [batch] (int64): how many leading rows of each image are real."""

    def __init__(self, model, max_detections):
        super().__init__()
        self.model = model
        self.max_detections = int(max_detections)
        self.named_forward = model.forward  # the inputs keep the names of the model's own forward()

    def forward(self, *args, **kwargs):
        results = self.model(*args, **kwargs)
        keys = per_image_keys(results, check_sizes=False)
        if keys is None:
            raise TypeError("forward() must return one dict of tensors per image (the same keys, the detections "
                            "on axis 0), got a %s" % type(results).__name__)
        top = self.max_detections
        fields = {k: [] for k in keys}
        counts = []
        for item in results:
            kept = item[keys[0]][:top]
            counts.append(kept.new_full((), kept.shape[0], dtype=torch.int64))
            for k in keys:
                value = item[k][:top]
                pad = value.new_zeros((top - value.shape[0],) + tuple(value.shape[1:]))
                fields[k].append(torch.cat([value, pad]))
        out = {k: torch.stack(v) for k, v in fields.items()}
        out[COUNT_OUTPUT] = torch.stack(counts)
        return out
