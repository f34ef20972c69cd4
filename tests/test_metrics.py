"""Confusion matrix and the scores derived from it, against hand-computed values."""

import math

import pytest
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


def _reduce_rank(rank, init_file, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        cm = ConfusionMatrix(2)
        if rank == 0:
            cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))  # predictions, labels
        else:
            cm.update(torch.tensor([1]), torch.tensor([0]))
        cm.reduce()
        torch.save(cm.mat, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes
def test_reduce_sums_the_matrices_of_every_process(tmp_path):
    """Under torchrun each process holds the matrix of its share of the images; reduce() leaves the sum on
    every rank (one all_reduce through util.distributed), still int64."""
    import torch.multiprocessing as mp

    mp.start_processes(_reduce_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    mats = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # rank 0: (0->0), (1->1), (0->1); rank 1: (0->1)
    expected = torch.tensor([[1, 2], [0, 1]])
    assert all(m.dtype == torch.int64 and torch.equal(m, expected) for m in mats)
