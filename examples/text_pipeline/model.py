"""A text classifier served on raw text: the client sends UTF-8 strings, the pipeline answers labels.

``get_preprocess()`` tokenizes with a WordPiece tokenizer of the ``tokenizers`` library whose
vocabulary is built in code from a few sentences (nothing is downloaded), padded/truncated to a
fixed length; the model embeds, mean-pools over the non-padding tokens and classifies; ``get_postprocess()`` turns one
row of logits into a label and its softmax score. ``generate`` writes ``text_pipeline_pre``,
``text_pipeline_post`` and the ensemble ``text_pipeline_pipeline`` beside the model.
"""
import numpy as np
import torch
from torch import nn

SEQ_LEN = 16
LABELS = ("negative", "neutral", "positive")
CORPUS = [
    "the movie was great and the actors were wonderful",
    "a terrible film with a boring plot",
    "it was fine, nothing special",
    "I loved the music and the story",
    "the service was slow and the food was cold",
    "an average day with average weather",
]


def build_tokenizer():
    """A WordPiece tokenizer with a vocabulary built in code from ``CORPUS``: whole words, then each
    character alone and as a ``##`` continuation, sorted. Deterministic on purpose: it is built at
    generate time and again inside the serving model, and the ``tokenizers`` trainers number their
    vocabulary differently from one process to the next."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    words = sorted({w for line in CORPUS for w, _ in
                    pre_tokenizers.BertPreTokenizer().pre_tokenize_str(normalizer.normalize_str(line))})
    chars = sorted({c for w in words for c in w})
    tokens = ["[PAD]", "[UNK]"] + words + [c for c in chars if c not in words] + ["##" + c for c in chars]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=SEQ_LEN)
    tok.enable_truncation(SEQ_LEN)
    return tok


class TextClassifier(nn.Module):
    def __init__(self, vocab: int = 256, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, len(LABELS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return TextClassifier().eval()


def get_samples():
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 200, (b, SEQ_LEN), generator=g), torch.ones(b, SEQ_LEN, dtype=torch.int64))
            for b in (1, 4, 8)]


def get_preprocess():
    tok = build_tokenizer()

    def preprocess(raw: bytes) -> dict:
        enc = tok.encode(raw.decode("utf-8"))  # undecodable bytes fail this request alone
        return {"input_ids": np.array(enc.ids, dtype=np.int64),
                "attention_mask": np.array(enc.attention_mask, dtype=np.int64)}

    return preprocess


def get_postprocess():
    def postprocess(outputs: dict) -> dict:
        logits = np.asarray(outputs["output_0"], dtype=np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = int(probs.argmax())
        return {"label": LABELS[best], "score": np.float32(probs[best])}

    return postprocess


def get_raw_samples():
    return ["what a wonderful movie", "the food was cold and boring", "an average story",
            "I loved it", "terrible, slow and boring service with a plot nobody cares about at all, really"]
