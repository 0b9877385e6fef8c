"""An LSTM tagger taking ``tokens`` and their ``lengths`` (packed sequences); lengths <= the tokens' length."""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.lstm, self.out = nn.Embedding(20, 8), nn.LSTM(8, 8, batch_first=True), nn.Linear(8, 5)

    def forward(self, tokens, lengths):
        packed = pack_padded_sequence(self.emb(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=tokens.shape[1])
        return self.out(out)


def get_model():
    torch.manual_seed(0)
    return Tagger().eval()


def get_samples():
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(1, 20, (b, s), generator=g), torch.randint(1, s + 1, (b,), generator=g))
            for b, s in ((1, 6), (2, 15), (4, 10))]
