"""A text encoder sampled only at sequence lengths 16 and 32 and batches up to 4: a tiny random-init
Hugging Face BertModel whose config states ``max_position_embeddings=128``, so the served envelope
reaches well beyond the samples (lengths 5 and 77, batch 8 and more)."""

import torch
from transformers import BertConfig, BertModel


def get_model():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128)
    return BertModel(config).eval()


def get_samples():
    g = torch.Generator().manual_seed(0)
    samples = []
    for batch, seq in ((1, 16), (4, 32), (2, 16)):
        samples.append({"input_ids": torch.randint(0, 100, (batch, seq), generator=g),
                        "attention_mask": torch.ones(batch, seq, dtype=torch.int64)})
    return samples
