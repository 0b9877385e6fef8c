"""A BERT-base-sized Hugging Face BertModel in float16 (BertConfig() defaults, random weights: no download),
sequence length 128, as an embedding service serves it."""
import torch
from transformers import BertConfig, BertModel


def get_model():
    torch.manual_seed(0)
    return BertModel(BertConfig()).eval().half()


def get_samples():
    g = torch.Generator().manual_seed(0)
    samples = []
    for batch in (1, 8):
        ids = torch.randint(0, BertConfig().vocab_size, (batch, 128), generator=g)
        samples.append({"input_ids": ids, "attention_mask": torch.ones(batch, 128, dtype=torch.long)})
    return samples
