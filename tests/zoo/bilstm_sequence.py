"""A bidirectional LSTM returning its whole output sequence beside the logits: with ``batch_first``
the sequence comes out of ``nn.LSTM`` as a transposed view, not contiguous, and a second output is
a transpose too; the server must hand both to Triton as they are (made contiguous), not fail."""

import torch
from torch import nn


class BiLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        seq, _ = self.lstm(x)
        return self.head(seq[:, -1]), seq, seq.transpose(1, 2)


def get_model():
    torch.manual_seed(0)
    return BiLSTM().eval()


def get_samples():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, t, 6, generator=g) for b, t in ((1, 5), (2, 7), (4, 3))]
