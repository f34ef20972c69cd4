"""Confusion matrix and the scores derived from it, against hand-computed values."""

import math

import torch

from util.metrics import ConfusionMatrix


def test_against_hand_computed_matrix():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(pred, target)
    # rows: true class, cols: predicted; the 255 pixel is skipped
    expected = torch.tensor([[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    assert torch.equal(cm.mat, expected)
    r = cm.compute()
    iou = [1 / (2 + 3 - 1), 2 / (3 + 3 - 2), 1 / (2 + 1 - 1)]
    acc = [1 / 2, 2 / 3, 1 / 2]
    assert all(math.isclose(a, b) for a, b in zip(r["iou"], iou))
    assert all(math.isclose(a, b) for a, b in zip(r["acc"], acc))
    assert math.isclose(r["mIoU"], sum(iou) / 3)
    assert math.isclose(r["mAcc"], sum(acc) / 3)
    assert math.isclose(r["allAcc"], 4 / 7)


def test_accumulates_over_images_not_mean_of_images():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]))  # class 1: IoU 0 in this image
    cm.update(torch.tensor([1, 1, 0]), torch.tensor([1, 1, 1]))  # class 1: IoU 2/3 in this image
    r = cm.compute()
    # one matrix over both images: class 1 TP 2, FN 2 -> 1/2 (the mean of per-image IoUs would be 1/3);
    # class 0 TP 3, FP 2 -> 3/5
    assert math.isclose(r["iou"][1], 1 / 2) and math.isclose(r["iou"][0], 3 / 5)
    assert math.isclose(r["mIoU"], (1 / 2 + 3 / 5) / 2)
    assert math.isclose(r["allAcc"], 5 / 7)


def test_absent_class_is_nan_and_excluded_from_means():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    r = cm.compute()
    assert math.isnan(r["iou"][2]) and r["mIoU"] == 1.0


def test_large_counts_do_not_saturate():
    cm = ConfusionMatrix(2)
    n = 2**24 + 3  # float32 histc would lose these last counts
    cm.update(torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64))
    assert cm.mat[0, 0].item() == n and cm.mat.dtype == torch.int64


def test_out_of_range_label_is_an_error():
    cm = ConfusionMatrix(2)
    try:
        cm.update(torch.tensor([0]), torch.tensor([5]))
    except ValueError as e:
        assert "5" in str(e)
    else:
        raise AssertionError("expected ValueError")
