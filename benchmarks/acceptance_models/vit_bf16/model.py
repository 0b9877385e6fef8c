"""A ViT-B/16-sized Hugging Face ViTModel in bfloat16 (ViTConfig() defaults, random weights: no download)."""
import torch
from transformers import ViTConfig, ViTModel


def get_model():
    torch.manual_seed(0)
    return ViTModel(ViTConfig()).eval().to(torch.bfloat16)


def get_samples():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, 3, 224, 224, generator=g).to(torch.bfloat16) for b in (1, 8)]
