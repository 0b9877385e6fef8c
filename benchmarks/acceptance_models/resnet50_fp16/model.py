"""torchvision ResNet-50 in float16, as Triton's canonical example serves it (random weights: no download).

Built on the CPU the way a user writes it; generate copies it to the GPU for the fallback and its reference."""
import torch
import torchvision


def get_model():
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval().half()


def get_samples():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, 3, 224, 224, generator=g).half() for b in (1, 8)]
