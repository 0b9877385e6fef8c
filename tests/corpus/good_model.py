"""A small image classifier with a dynamic batch: the main example (`make demo`)."""
import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(image), 1))


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().eval()


def get_samples():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, 3, 32, 32, generator=g) for b in (1, 4, 8, 8)]
