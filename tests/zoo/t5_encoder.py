"""Hugging Face T5EncoderModel (relative position buckets) from a tiny config, random weights."""

import torch
from transformers import T5Config, T5EncoderModel


def get_model():
    torch.manual_seed(0)
    config = T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    return T5EncoderModel(config).eval()


def get_samples():
    g = torch.Generator().manual_seed(2)
    samples = []
    for batch, seq in ((1, 8), (2, 12), (4, 16)):
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[0, seq - 3:] = 0
        samples.append({"input_ids": torch.randint(0, 128, (batch, seq), generator=g), "attention_mask": mask})
    return samples
