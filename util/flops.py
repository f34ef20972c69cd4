"""Parameter and FLOP counts for the results tables (FLOPs counted on the meta device: no compute)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model.pspnet import build_pspnet


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(layers: int, classes: int, crop_size: int) -> float:
    """Forward GFLOPs (multiply-add = 2 FLOPs) of PSPNet-R{layers} with its aux head on one crop×crop image."""
    with torch.device("meta"):
        model = build_pspnet(layers, classes, pretrained=False).eval()
        x = torch.empty(1, 3, crop_size, crop_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9
