"""A tiny transformer encoder: int64 token ids + attention mask, dynamic batch and sequence, dict outputs."""
import torch
from torch import nn


class TinyEncoder(nn.Module):
    def __init__(self, vocab: int = 1000, dim: int = 32, heads: int = 2, layers: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=64, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.pool = nn.Linear(dim, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        hidden = self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = torch.tanh(self.pool((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)))
        return {"last_hidden_state": hidden, "pooled": pooled}


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyEncoder().eval()


def get_samples():
    g = torch.Generator().manual_seed(2)
    samples = []
    for batch, seq in ((1, 8), (2, 16), (4, 12), (4, 16)):
        ids = torch.randint(0, 1000, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[:, seq - 2:] = 0 if batch > 1 else 1
        samples.append({"input_ids": ids, "attention_mask": mask})
    return samples
