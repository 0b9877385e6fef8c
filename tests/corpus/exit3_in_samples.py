import sys
import torch
def get_model():
    return torch.nn.Linear(2, 2)
def get_samples():
    sys.exit(3)
