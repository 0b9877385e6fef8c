"""An image classifier served on encoded images: the client sends PNG/JPEG bytes, the pipeline
answers the top-3 labels with their scores.

``get_preprocess()`` decodes one image with Pillow, converts it to RGB, resizes it to 32x32 and
normalises it to a CHW float32 tensor; ``get_postprocess()`` turns one row of logits into the
three best labels (strings) and their softmax scores. ``get_raw_samples()`` draws a few PNGs in
code (nothing is downloaded). ``generate`` writes ``image_pipeline_pre``, ``image_pipeline_post``
and the ensemble ``image_pipeline_pipeline`` beside the model.
"""
import io

import numpy as np
import torch
from torch import nn

SIZE = 32
LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, len(LABELS))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(image), 1))


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().eval()


def get_samples():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, 3, SIZE, SIZE, generator=g) for b in (1, 4, 8)]


def get_preprocess():
    from PIL import Image

    def preprocess(raw: bytes) -> dict:
        with Image.open(io.BytesIO(raw)) as img:  # undecodable bytes fail this request alone
            rgb = img.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        chw = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return {"image": ((chw - MEAN) / STD).astype(np.float32)}

    return preprocess


def get_postprocess():
    def postprocess(outputs: dict) -> dict:
        logits = np.asarray(outputs["output_0"], dtype=np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(-probs, kind="stable")[:3]
        return {"labels": [LABELS[i] for i in top], "scores": probs[top].astype(np.float32)}

    return postprocess


def get_raw_samples():
    """A few PNGs of different sizes and modes, drawn in code."""
    from PIL import Image

    rows = []
    for i, (w, h, mode) in enumerate([(32, 32, "RGB"), (64, 48, "RGB"), (20, 40, "L"), (50, 50, "RGBA")]):
        y, x = np.mgrid[0:h, 0:w]
        channels = [(x * (3 + i) + y * 5) % 256, (y * (7 - i) + 40 * i) % 256, ((x + y) * 11) % 256, x * 0 + 255]
        arr = np.stack(channels[:len(mode)], axis=-1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(buf, format="PNG")
        rows.append(buf.getvalue())
    return rows
