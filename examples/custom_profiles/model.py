"""get_config(): custom TensorRT profiles (two, for small and large batches), fp16 precision,
CUDA graphs, two instances and a longer queue delay."""
import torch
from torch import nn

from aitune_triton import GenerateConfig, TensorRTBackendConfig, TensorRTProfile


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return MLP().eval()


def get_samples():
    g = torch.Generator().manual_seed(4)
    return [torch.randn(b, 64, generator=g) for b in (1, 4, 16, 32)]


def get_config() -> GenerateConfig:
    return GenerateConfig(
        name="mlp_custom",
        max_batch_size=32,
        instances=2,
        max_queue_delay_us=1000,
        tensorrt=TensorRTBackendConfig(
            precision="fp16",
            use_cuda_graphs=True,
            workspace_size=1 << 30,
            profiles=[
                TensorRTProfile().add_input_shape("x", (1, 64), (4, 64), (32, 64)),
                TensorRTProfile().add_input_shape("x", (1, 64), (32, 64), (32, 64)),
            ],
        ),
    )
