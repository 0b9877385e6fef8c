"""An LSTM classifier with int8 dynamic quantization (``torch.ao.quantization.quantize_dynamic``),
the usual CPU deployment: the state_dict holds packed LSTM cell params and dtypes, not only tensors."""

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.out = nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.lstm(x)[0][:, -1])


def get_model():
    torch.manual_seed(0)
    return torch.ao.quantization.quantize_dynamic(Classifier().eval(), {nn.LSTM, nn.Linear}, dtype=torch.qint8)


def get_samples():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, s, 8, generator=g) for b, s in ((1, 5), (2, 7), (4, 6))]
