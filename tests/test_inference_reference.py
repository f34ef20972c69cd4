"""engine/inference.py against a reference written here from the protocol of hszhao/semseg's tool/test.py.

The reference follows that description step by step with numpy and OpenCV, the way semseg's script is
written (``net_process``, ``scale_process``, the scale loop), sharing no code with engine/inference.py: resize
of the float image so the long side is round(base * scale), padding with the mean colour to the crop,
windows at ``start = min(i * stride, size - crop)`` with stride ceil(crop * 2/3), logits zoomed to the window
(bilinear, align_corners=True) when the network outputs less, softmax, the flipped window's softmax
flipped back and averaged, overlaps averaged, the padding cut, probabilities resized back to the image
(OpenCV bilinear), averaged over scales. Probabilities must agree within 1e-5.
"""

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from engine.inference import predict, predict_probs

CLASSES = 5
CROP = 65


class TinyNet(nn.Module):
    """Deterministic logits; ``stride`` 2 makes them coarser than the input, as a real network's are."""

    def __init__(self, stride: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, CLASSES, 5, stride=stride, padding=2)

        self.aux_calls = 0

    def forward(self, x, aux=True):
        if aux:  # evaluation must not ask for the aux head
            self.aux_calls += 1
        return {"out": self.conv(x)}


def net_process(model, window, flip):
    """semseg's net_process: H×W×3 float window -> H×W×K softmax, flip-averaged."""
    x = torch.from_numpy(window.transpose(2, 0, 1).copy()).float()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = ((x - mean) / std)[None]
    if flip:
        x = torch.cat([x, x.flip(3)], 0)
    with torch.no_grad():
        out = model(x)["out"]
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, x.shape[-2:], mode="bilinear", align_corners=True)
    out = F.softmax(out, dim=1)
    out = (out[0] + out[1].flip(2)) / 2 if flip else out[0]
    return out.numpy().transpose(1, 2, 0)


def scale_process(model, image, crop, flip, stride_rate=2 / 3):
    """semseg's scale_process: pad with the mean, slide, average overlaps, cut the padding."""
    ori_h, ori_w = image.shape[:2]
    pad_h, pad_w = max(crop - ori_h, 0), max(crop - ori_w, 0)
    top, left = pad_h // 2, pad_w // 2
    if pad_h > 0 or pad_w > 0:
        image = cv2.copyMakeBorder(image, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT,
                                   value=list(IMAGENET_MEAN))
    new_h, new_w = image.shape[:2]
    stride = int(math.ceil(crop * stride_rate))
    grid_h = int(math.ceil(float(new_h - crop) / stride) + 1)
    grid_w = int(math.ceil(float(new_w - crop) / stride) + 1)
    prediction = np.zeros((new_h, new_w, CLASSES), dtype=float)
    count = np.zeros((new_h, new_w), dtype=float)
    for i in range(grid_h):
        for j in range(grid_w):
            e_h = min(i * stride + crop, new_h)
            e_w = min(j * stride + crop, new_w)
            s_h, s_w = e_h - crop, e_w - crop
            count[s_h:e_h, s_w:e_w] += 1
            prediction[s_h:e_h, s_w:e_w] += net_process(model, image[s_h:e_h, s_w:e_w].copy(), flip)
    prediction /= count[:, :, None]
    return prediction[top:top + ori_h, left:left + ori_w]


def reference(model, image, base_size, scales, flip):
    h, w = image.shape[:2]
    total = np.zeros((h, w, CLASSES), dtype=float)
    for scale in scales:
        long_size = round(scale * base_size)
        new_h, new_w = long_size, long_size
        if h > w:
            new_w = round(long_size / float(h) * w)
        else:
            new_h = round(long_size / float(w) * h)
        scaled = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        probs = scale_process(model, scaled, CROP, flip).astype(np.float32)
        total += cv2.resize(probs, (w, h), interpolation=cv2.INTER_LINEAR)
    return total / len(scales)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("scales", [[1.0], [0.75, 1.0, 1.5]])
@pytest.mark.parametrize("size, base", [((30, 40), 48), ((110, 150), 150)])  # smaller / larger than the crop
def test_probabilities_match_the_reference(stride, flip, scales, size, base):
    model = TinyNet(stride).eval()
    image = np.random.default_rng(1).uniform(0, 255, (*size, 3)).astype(np.float32)
    ours = predict_probs(model, image, CLASSES, base, CROP, scales, flip, 2 / 3, torch.device("cpu"))
    ref = reference(model, image, base, scales, flip)
    np.testing.assert_allclose(ours.numpy().transpose(1, 2, 0), ref, atol=1e-5, rtol=0)
    # and the class map is its argmax, computed without the aux head
    model.aux_calls = 0
    labels = predict(model, image, CLASSES, base, CROP, scales, flip, 2 / 3, torch.device("cpu"))
    assert (labels == ours.argmax(0).numpy()).all()
    assert model.aux_calls == 0


def test_a_uint8_image_is_resized_as_float():
    """semseg converts the decoded image to float32 before resizing; a uint8 resize would round every
    interpolated pixel to a whole grey level and move the probabilities beyond the tolerance."""
    model = TinyNet(2).eval()
    image = np.random.default_rng(2).integers(0, 256, (110, 150, 3), dtype=np.uint8)
    ours = predict_probs(model, image, CLASSES, 137, CROP, [0.75, 1.0], False, 2 / 3, torch.device("cpu"))
    ref = reference(model, image.astype(np.float32), 137, [0.75, 1.0], False)
    np.testing.assert_allclose(ours.numpy().transpose(1, 2, 0), ref, atol=1e-5, rtol=0)
    rounded = reference(model, image, 137, [0.75, 1.0], False)  # what a uint8 resize gives
    assert np.abs(rounded - ref).max() > 1e-5


def test_the_reference_is_sensitive():
    """A protocol slip (no flip averaging) moves the probabilities far beyond the tolerance."""
    model = TinyNet(2).eval()
    image = np.random.default_rng(1).uniform(0, 255, (110, 150, 3)).astype(np.float32)
    ours = predict_probs(model, image, CLASSES, 150, CROP, [1.0], True, 2 / 3, torch.device("cpu"))
    ref = reference(model, image, 150, [1.0], False)
    assert np.abs(ours.numpy().transpose(1, 2, 0) - ref).max() > 1e-3


# ---------------------------------------------------------------- mmsegmentation's VOC protocol
def mmseg_reference(model, image, short, flip):
    """mmseg's test pipeline for VOC, written from its Resize(scale=(2048, 512), keep_ratio=True) and
    EncoderDecoder.whole_inference: scale factor min(2048 / long, 512 / short), new size int(x * f + 0.5), the
    whole image through the network, logits zoomed to it with align_corners=False, softmax (flip-averaged); here
    the probabilities are resized back to the image with OpenCV, as segkd does for both protocols."""
    h, w = image.shape[:2]
    factor = min(4 * short / max(h, w), short / min(h, w))
    nh, nw = int(h * factor + 0.5), int(w * factor + 0.5)
    scaled = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(scaled.transpose(2, 0, 1).copy()).float()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = ((x - mean) / std)[None]
    with torch.no_grad():
        outs = [model(x)["out"]] + ([model(x.flip(3))["out"].flip(3)] if flip else [])
    probs = sum(F.softmax(F.interpolate(o, (nh, nw), mode="bilinear", align_corners=False), 1) for o in outs)
    probs = (probs / len(outs))[0].numpy().transpose(1, 2, 0)
    return cv2.resize(probs, (w, h), interpolation=cv2.INTER_LINEAR), (nh, nw)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("size, short, resized", [((75, 100), 80, (80, 107)), ((30, 200), 40, (24, 160))])
def test_whole_image_short_side_protocol_matches_mmsegs(flip, size, short, resized):
    """(30, 200) at 40: the short side would make the long one 267 > 4 x 40, so the long side caps it (x 0.8)."""
    model = TinyNet(2).eval()
    model.align_corners = False
    image = np.random.default_rng(3).uniform(0, 255, (*size, 3)).astype(np.float32)
    ours = predict_probs(model, image, CLASSES, short, CROP, [1.0], flip, 2 / 3, torch.device("cpu"),
                         mode="whole", resize="short")
    ref, got_size = mmseg_reference(model, image, short, flip)
    assert got_size == resized
    np.testing.assert_allclose(ours.numpy().transpose(1, 2, 0), ref, atol=1e-5, rtol=0)
    slid = predict_probs(model, image, CLASSES, short, CROP, [1.0], flip, 2 / 3, torch.device("cpu"))
    assert np.abs(slid.numpy().transpose(1, 2, 0) - ref).max() > 1e-3  # the default protocol is another one


def test_protocol_names_and_keys():
    from engine.evaluate import protocol, protocol_name
    from util.config import load_config
    from util.errors import SegKDError

    assert protocol_name(load_config(None, [])) == "ss"
    cfg = load_config(None, ["test.mode=whole", "test.resize=short"])
    assert protocol_name(cfg) == "whole_ss_short"
    assert protocol(cfg)["mode"] == "whole" and protocol(cfg)["resize"] == "short"
    assert protocol_name(load_config(None, ["test.flip=true", "test.scales=[0.5,1.0]"])) == "ms_flip"
    with pytest.raises(SegKDError, match="test.mode"):
        load_config(None, ["test.mode=windows"])
