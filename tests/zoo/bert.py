"""Hugging Face BertModel (3 int64 inputs, a ModelOutput dataclass out) from a tiny config, random weights."""

import torch
from transformers import BertConfig, BertModel


def get_model():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return BertModel(config).eval()


def get_samples():
    g = torch.Generator().manual_seed(0)
    samples = []
    for batch, seq in ((1, 8), (2, 12), (4, 16)):
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[:, seq - 2:] = 0
        samples.append({"input_ids": torch.randint(0, 128, (batch, seq), generator=g), "attention_mask": mask,
                        "token_type_ids": torch.zeros(batch, seq, dtype=torch.int64)})
    return samples
