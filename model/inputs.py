"""The input a network's first layer expects, when it is not segkd's own (``model.input``).

segkd's loaders, ``test.py`` and ``predict.py`` feed every network RGB images normalised with ImageNet's mean
and std on the 0..255 scale (:func:`data.transforms.normalize`). A network trained elsewhere on other inputs
gets a fixed conversion (no parameters, nothing in the state dict) in front of its backbone, so that a teacher
and a student still share one batch:

- ``imagenet``: none, the input as it comes.
- ``caffe``: BGR on the 0..255 scale minus the Caffe ImageNet mean (B 104.008, G 116.669, R 122.679), not
  divided by a std: what CIRKD's data loaders (``dataset/*.py``: ``cv2.imread``, then ``image - mean``) give
  its networks, so what its published teachers and students were trained on.

No weight folding replaces it: the conversion's offset is not a bias of the first conv, whose zero padding
would see it at the image border.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from data.transforms import IMAGENET_MEAN, IMAGENET_STD  # the one normalisation, inverted here

CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)  # CIRKD's dataset/*.py, BGR order


class CaffeInput(nn.Module):
    """segkd's input N x 3 x H x W (RGB, (x - mean) / std) -> CIRKD's (BGR, x - Caffe mean), per pixel:
    ``bgr[c] = x[2 - c] * std[2 - c] + mean[2 - c] - caffe[c]``."""

    def __init__(self) -> None:
        super().__init__()
        std = torch.tensor(IMAGENET_STD, dtype=torch.float64).flip(0)
        shift = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).flip(0) - torch.tensor(CAFFE_MEAN_BGR,
                                                                                          dtype=torch.float64)
        self.register_buffer("scale", std.float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.float().view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x.flip(1) * self.scale.to(x.dtype) + self.shift.to(x.dtype)


INPUTS = {"imagenet": nn.Identity, "caffe": CaffeInput}

__all__ = ["CAFFE_MEAN_BGR", "INPUTS", "CaffeInput"]
