"""Hugging Face GPT-2 LM head from a tiny config, random weights; ``use_cache=False`` so no cache object is returned."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def get_model():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                        eos_token_id=0, use_cache=False)
    return GPT2LMHeadModel(config).eval()


def get_samples():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 128, (batch, seq), generator=g)}
            for batch, seq in ((1, 8), (2, 12), (4, 16))]
