"""The speed switches change no result beyond a stated tolerance, also through the trainer (Trainer.step and
engine.setup.prepare_models, as train.py builds them), and the benchmark tool runs on CPU."""

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from data.dataset import SegDataset
from data.loader import build_train_loader
from data.transforms import IMAGENET_STD, build_train_transform, normalize
from engine.flops import gflops
from engine.setup import build_optimizer, prepare_models
from engine.trainer import Trainer
from model.distiller import Distiller
from model.pspnet import PSPNet, build_pspnet
from tests.conftest import TINY_CLASSES, run_cli
from util.config import check_training, load_config
from util.distributed import DistInfo
from util.errors import SegKDError


def pair():
    torch.manual_seed(0)
    return build_pspnet(18, 5), build_pspnet(50, 5)


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 65, 65, generator=g), torch.randint(0, 5, (2, 65, 65), generator=g)


def test_bf16_autocast_losses_agree_with_fp32():
    # bf16 keeps 8 mantissa bits: per-term losses agree to a few percent (stated tolerance: 5% relative).
    # An R18 teacher and 33-pixel images: bf16 convolutions are slow on CPUs without bf16 units (20 s at R50/65).
    torch.manual_seed(0)
    student, teacher = build_pspnet(18, 5), build_pspnet(18, 5)
    d = Distiller(student, teacher, feat_loss="kl").eval()
    images, target = batch()
    images, target = images[:, :, :33, :33], target[:, :33, :33]
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


# ---------------------------------------------------------------- the switches through the trainer
# Trainer.step and engine.setup.prepare_models with each switch, on a PSPNet over a two-conv backbone (a few ms
# a step; the switches act on the convolutions, BN and the loop, not on the depth).
KD = "config/synthetic/pspnet18_kd_aux_kl.yaml"
CLASSES = 3
CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


class TinyBackbone(nn.Module):
    channels = {"layer3": 8, "layer4": 16}

    def __init__(self):
        super().__init__()
        self.layer3 = nn.Sequential(nn.Conv2d(3, 8, 3, stride=8, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer4 = nn.Conv2d(8, 16, 3, padding=1)

    def forward(self, x):
        c3 = self.layer3(x)
        return {"layer3": c3, "layer4": self.layer4(c3)}


def tiny_pspnet(seed):
    torch.manual_seed(seed)
    return PSPNet(TinyBackbone(), CLASSES, bins=(1, 2))


class Recording(nn.Module):
    """The distiller, recording what Trainer.step hands it and the dtype of the student's logits."""

    def __init__(self, distiller):
        super().__init__()
        self.distiller = distiller
        self.images, self.logit_dtypes = [], []
        distiller.student.register_forward_hook(lambda module, args, out: self.logit_dtypes.append(out["out"].dtype))

    def forward(self, images, target):
        self.images.append(images.detach().clone(memory_format=torch.preserve_format))
        return self.distiller(images, target)


def make_trainer(tmp_path, *overrides):
    """A distilling Trainer as train.py builds it (prepare_models, Distiller.from_config, build_optimizer),
    without a loader: the tests call step() with their own batches."""
    cfg = load_config(KD, [f"data.classes={CLASSES}", "data.root=unused", f"output.dir={tmp_path}",
                           "train.batch_size=2", "train.crop_size=32", "train.iters=4", *overrides])
    student, teacher = prepare_models(tiny_pspnet(0), tiny_pspnet(1), cfg, CPU)
    distiller = Recording(Distiller.from_config(student, teacher, cfg))
    meta = {"format": "segkd", "mode": "distill", "layers": 18, "classes": CLASSES}
    return Trainer(cfg, CPU, distiller, build_optimizer(student, cfg), SimpleNamespace(batch_size=2), range(8), None,
                   meta)


def student_of(trainer):
    return trainer.distiller.distiller.student


def uint8_batch():
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8), torch.randint(0, CLASSES, (2, 32, 32),
                                                                                                generator=g)


def parameters(trainer):
    return {k: v.detach().clone() for k, v in student_of(trainer).named_parameters()}


def steps(trainer, n, images, target):
    for i in range(n):
        torch.manual_seed(10 + i)  # the same dropout masks in every trainer compared
        trainer.step(images, target)


@pytest.mark.slow  # runs Trainer.step
def test_trainer_normalises_a_uint8_batch_before_the_distiller(tmp_path):
    """train.uint8_batches: the loader yields uint8; the distiller must get the float32 normalize() of it, as
    the default pipeline's loader gives (and a float batch must pass unchanged, not be normalised twice)."""
    trainer = make_trainer(tmp_path, "train.uint8_batches=true")
    images, target = uint8_batch()
    trainer.step(images, target)
    trainer.step(normalize(images), target)
    first, second = trainer.distiller.images
    assert first.dtype == torch.float32 and torch.equal(first, normalize(images))
    assert torch.equal(second, normalize(images))
    assert images.dtype == torch.uint8  # the loader's batch is left as it was


@pytest.mark.slow  # runs Trainer.step
def test_bf16_amp_trains_through_the_trainer(tmp_path):
    trainer = make_trainer(tmp_path, "train.amp=true")
    assert trainer.cfg.train.amp_dtype == "bfloat16" and not trainer.scaler.is_enabled()
    before = parameters(trainer)
    images, target = uint8_batch()
    steps(trainer, 2, images, target)
    assert trainer.distiller.logit_dtypes == [torch.bfloat16] * 2  # the student ran under bf16 autocast
    after = parameters(trainer)
    assert all(torch.isfinite(p).all() for p in after.values())
    assert [k for k in after if torch.equal(after[k], before[k])] == []  # every parameter got a gradient step
    values = trainer.flush()
    assert set(values) == {"loss", "ce", "aux", "kd", "feat", "lr"}
    assert all(math.isfinite(v) for v in values.values())


@pytest.mark.parametrize("amp, dtype, scaled", [(False, "float16", False), (True, "bfloat16", False),
                                                (True, "float16", True)])
def test_grad_scaler_only_for_float16_amp(tmp_path, amp, dtype, scaled):
    assert make_trainer(tmp_path, f"train.amp={amp}", f"train.amp_dtype={dtype}").scaler.is_enabled() is scaled


def test_config_refuses_float16_amp_on_the_cpu_only():
    def cfg(dtype):
        return load_config(KD, ["data.root=unused", "output.dir=unused", "train.batch_size=2", "train.amp=true",
                                f"train.amp_dtype={dtype}"])

    with pytest.raises(SegKDError, match=r"^train\.amp_dtype=float16 needs CUDA"):
        check_training(cfg("float16"), 1, False, "cpu")
    check_training(cfg("float16"), 1, False, "cuda")
    check_training(cfg("bfloat16"), 1, False, "cpu")


@pytest.mark.slow  # runs Trainer.step
def test_float16_grad_scaler_step_is_the_unscaled_update(tmp_path):
    """The config refuses float16 on the CPU (above), but the trainer is device-agnostic, so its GradScaler path
    (scale the loss, backward, unscale in step, update) runs here under CPU float16 autocast. The update must be
    the unscaled one: a scaled gradient reaching the optimizer moves the weights 65536x too far, an unscaled
    loss with a scaled step 65536x too little."""
    plain = make_trainer(tmp_path / "fp32")
    half = make_trainer(tmp_path / "fp16", "train.amp=true", "train.amp_dtype=float16")
    before = parameters(plain)
    assert all(torch.equal(before[k], v) for k, v in parameters(half).items())
    images, target = uint8_batch()
    steps(plain, 1, images, target)
    steps(half, 1, images, target)
    assert half.distiller.logit_dtypes == [torch.float16]
    delta_plain = torch.cat([(p - before[k]).flatten() for k, p in parameters(plain).items()])
    delta_half = torch.cat([(p - before[k]).flatten() for k, p in parameters(half).items()])
    assert torch.isfinite(delta_half).all()
    assert ((delta_half - delta_plain).norm() / delta_plain.norm()).item() < 0.05
    assert half.scaler.get_scale() == 2.0 ** 16 and half.scaler.state_dict()["_growth_tracker"] == 1  # updated


@pytest.mark.slow  # runs Trainer.step
def test_channels_last_through_prepare_models_trains_like_the_default(tmp_path):
    """train.channels_last: both networks' weights and the batch in channels_last; the same training."""
    plain, cl = make_trainer(tmp_path / "plain"), make_trainer(tmp_path / "cl", "train.channels_last=true")
    d = cl.distiller.distiller
    for net in (d.student, d.teacher):
        assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in net.modules()
                   if isinstance(m, nn.Conv2d))
    assert not student_of(plain).backbone.layer4.weight.is_contiguous(memory_format=torch.channels_last)
    before = parameters(plain)
    images, target = uint8_batch()
    steps(plain, 2, images, target)
    steps(cl, 2, images, target)
    seen = cl.distiller.images[0]
    assert seen.is_contiguous(memory_format=torch.channels_last) and not seen.is_contiguous()
    assert plain.distiller.images[0].is_contiguous()
    a, b = parameters(plain), parameters(cl)
    assert all(not torch.equal(a[k], before[k]) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_compile_falls_back_to_eager_when_compilation_fails(tmp_path, monkeypatch):
    """train.compile: prepare_models compiles student and teacher in place; a backend that fails (no C++
    compiler, an unsupported op) must leave training running eagerly, with the eager run's weights."""
    import torch._dynamo
    import torch._inductor.compile_fx as inductor

    failures = []

    def cannot_compile(*args, **kwargs):
        failures.append(1)
        raise RuntimeError("no C++ compiler on this machine")

    monkeypatch.setattr(inductor, "compile_fx", cannot_compile)
    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", False)  # prepare_models sets it; restored after
    eager, compiled = make_trainer(tmp_path / "eager"), make_trainer(tmp_path / "compiled", "train.compile=true")
    try:
        d = compiled.distiller.distiller
        assert torch._dynamo.config.suppress_errors
        assert d.student._compiled_call_impl is not None and d.teacher._compiled_call_impl is not None
        assert set(d.student.state_dict()) == set(student_of(eager).state_dict())  # in place: the same keys
        images, target = uint8_batch()
        steps(eager, 2, images, target)
        steps(compiled, 2, images, target)
        assert failures  # compilation was attempted, and failed
        a, b = parameters(eager), parameters(compiled)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    finally:
        torch._dynamo.reset()
