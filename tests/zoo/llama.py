"""A Llama-style causal decoder (``LlamaForCausalLM``) from a tiny config, random weights, no cache:
``input_ids`` and a right-padded ``attention_mask`` whose rows always keep their first tokens."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def get_model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, use_cache=False)
    return LlamaForCausalLM(config).eval()


def get_samples():
    g = torch.Generator().manual_seed(1)
    samples = []
    for batch, seq in ((1, 8), (2, 12), (4, 16)):
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[batch - 1, seq - 3:] = 0  # the last row is padded on the right
        samples.append({"input_ids": torch.randint(0, 128, (batch, seq), generator=g), "attention_mask": mask})
    return samples
