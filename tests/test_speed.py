"""The speed switches change no result beyond a stated tolerance, and the benchmark tool runs on CPU."""

import copy
import json

import pytest
import torch

from data.dataset import SegDataset
from data.loader import build_train_loader
from data.transforms import IMAGENET_STD, build_train_transform, normalize
from engine.flops import gflops
from model.distiller import Distiller
from model.pspnet import build_pspnet
from tests.conftest import TINY_CLASSES, run_cli


def pair():
    torch.manual_seed(0)
    return build_pspnet(18, 5), build_pspnet(50, 5)


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 65, 65, generator=g), torch.randint(0, 5, (2, 65, 65), generator=g)


def test_bf16_autocast_losses_agree_with_fp32():
    # bf16 keeps 8 mantissa bits: per-term losses agree to a few percent (stated tolerance: 5% relative)
    student, teacher = pair()
    d = Distiller(student, teacher, feat_loss="kl").eval()
    images, target = batch()
    with torch.no_grad():
        _, fp32 = d(images, target)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, bf16 = d(images, target)
    for name in fp32:
        assert bf16[name].dtype == torch.float32  # losses are computed in fp32 even under autocast
        assert bf16[name].item() == pytest.approx(fp32[name].item(), rel=5e-2, abs=1e-3), name


def test_channels_last_changes_no_output():
    model, _ = pair()
    model.eval()
    images, _ = batch()
    with torch.no_grad():
        plain = model(images)
        cl = model.to(memory_format=torch.channels_last)(images.contiguous(memory_format=torch.channels_last))
    for k in plain:
        torch.testing.assert_close(cl[k], plain[k], rtol=1e-4, atol=1e-4)


def test_teacher_fast_path_equals_plain_forward():
    """Against an independent copy taken before the Distiller touched the teacher, in eval mode, while the
    distiller itself is in training mode (the teacher must stay in eval mode: running BN statistics)."""
    student, teacher = pair()
    reference = copy.deepcopy(teacher).eval()
    d = Distiller(student, teacher).train()
    images, _ = batch()
    fast = d.teacher_logits(images)
    with torch.no_grad():
        plain = reference(images)
        batch_stats = copy.deepcopy(reference).train()(images)  # what a teacher left in train mode gives
    for k in plain:
        assert torch.equal(fast[k], plain[k])
        assert not torch.allclose(fast[k], batch_stats[k], atol=1e-3)
        assert not fast[k].is_inference()  # usable in the student's autograd graph


def loader_batches(root, workers, uint8=False):
    ds = SegDataset(root, "list/train_aug.txt", TINY_CLASSES, 255, build_train_transform(65, uint8=uint8))
    loader, sampler = build_train_loader(ds, 2, workers, seed=3, rank=0, world_size=1, pin_memory=False)
    sampler.set_epoch(1)
    return [b for _, b in zip(range(3), loader)]


@pytest.mark.slow  # DataLoader worker processes
def test_data_pipeline_same_samples_for_any_worker_count(tiny_data):
    a, b = loader_batches(tiny_data, 0), loader_batches(tiny_data, 2)
    for (ia, la), (ib, lb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(la, lb)


def test_uint8_batches_stay_within_rounding_of_the_float_pipeline(tiny_data):
    """train.uint8_batches: uint8 augmentation, normalised by the trainer. Each interpolating step (scale,
    rotate, blur) rounds to a whole grey level and the padding is the rounded mean, so the batch is within
    1.5 grey levels of the default float pipeline's, never more; labels are identical."""
    plain, small = loader_batches(tiny_data, 0), loader_batches(tiny_data, 0, uint8=True)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    worst = 0.0
    for (ia, la), (ib, lb) in zip(plain, small):
        assert ia.dtype == torch.float32 and ib.dtype == torch.uint8 and torch.equal(la, lb)
        worst = max(worst, ((normalize(ib) - ia).abs() * std).max().item())
    assert 0 < worst <= 1.5  # in grey levels; 0 would mean the float pipeline rounds too


@pytest.mark.slow
def test_benchmark_runs_on_cpu(tiny_data, tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("-m", "tools.benchmark", "--config", "config/synthetic/pspnet18_kd.yaml", "--crop", "65",
                "--batch", "2", "--steps", "1", "--warmup", "1", "--workers", "0,1", "--loader-batches", "3",
                "--peak-tflops", "1.0", f"data.root={tiny_data}", f"data.classes={TINY_CLASSES}", "--out", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert [m["mode"] for m in result["models"]] == ["teacher_train", "student_train", "distill", "eval"]
    by_mode = {m["mode"]: m for m in result["models"]}
    assert all(m["images_per_s"] > 0 and m["tflops"] > 0 for m in result["models"])
    # a distillation step is a teacher forward plus a student step: more FLOPs than the student step alone
    assert by_mode["distill"]["gflop_per_image"] > by_mode["student_train"]["gflop_per_image"]
    assert by_mode["teacher_train"]["gflop_per_image"] > by_mode["distill"]["gflop_per_image"]
    # the eval row is test.py's network: no aux head, the FLOPs the results tables report for it
    assert by_mode["eval"]["gflop_per_image"] == pytest.approx(gflops(18, TINY_CLASSES, 65))
    assert {m["dtype"] for m in result["models"]} == {"float32"} and result["optimizer"] == "sgd"
    assert [r["workers"] for r in result["loader"]] == [0, 1]
    assert "| distill | float32 |" in r.stdout
