"""Triton's model warm-up data: one sample written as raw input files under ``warmup/``, which
``model_warmup`` in config.pbtxt points at."""

from __future__ import annotations

from pathlib import Path

import torch

from aitune_triton.spec import IOSpec, Sample, sample_feed



def write_warmup(spec: IOSpec, sample: Sample, warmup_dir: Path) -> dict[str, tuple[int, ...]]:
    """One batch item per input as raw row-major bytes (Triton replicates it to the batch size)."""
    warmup_dir.mkdir()
    dims = {}
    for t in spec.inputs:
        value = sample_feed(spec, sample)[t.name]
        item = value[0] if spec.batching else value
        if item.dim() == 0:
            item = item.reshape(1)
        (warmup_dir / ("%s.bin" % t.name)).write_bytes(item.contiguous().cpu().view(torch.uint8).numpy().tobytes()
                                                     if item.dtype == torch.bfloat16 else
                                                     item.contiguous().cpu().numpy().tobytes())
        dims[t.name] = tuple(item.shape)
    return dims
