import torch
from torch import nn

def get_model():
    return nn.Linear(2, 2)
