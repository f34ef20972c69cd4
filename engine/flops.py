"""Parameter and FLOP counts of the inference network (the segmentor without its aux head, which evaluation
skips) for the results tables; FLOPs are counted on the meta device: no compute."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model.build import arch_of, build_network


def count_params(model: nn.Module) -> int:
    """Parameters of the inference network: a PSPNet's aux head is left out, any other module counts whole."""
    params = model.inference_parameters() if hasattr(model, "inference_parameters") else model.parameters()
    return sum(p.numel() for p in params)


def gflops(layers: int, classes: int, crop_size: int, arch: Optional[dict[str, Any]] = None) -> float:
    """Forward GFLOPs (multiply-add = 2 FLOPs) of the network ``arch`` (a checkpoint's meta or ``model.*``;
    default PSPNet, torchvision stem) on a ResNet-``layers``, without its aux head, on one crop×crop image:
    what evaluation computes per window."""
    with torch.device("meta"):
        model = build_network(arch_of(arch or {}), layers, classes, pretrained=False).eval()
        x = torch.empty(1, 3, crop_size, crop_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, aux=False)
    return counter.get_total_flops() / 1e9
