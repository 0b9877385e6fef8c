"""GPT-2 with its default ``use_cache=True``: forward returns a DynamicCache, which cannot be served."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def get_model():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                                bos_token_id=0, eos_token_id=0)).eval()


def get_samples():
    return [{"input_ids": torch.randint(0, 128, (b, 8))} for b in (1, 2)]
