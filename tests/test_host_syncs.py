"""No host sync on the training path (issue 41): one profiled training iteration per distillation method and logit
loss, through the trainer's loop with the distributed path on (a one-process Gloo group standing in for a GPU
job), holds no ``aten::_local_scalar_dense``, ``aten::item`` or ``aten::nonzero`` outside the flush points (the one
place the loss terms come to the host). On a GPU each of those waits for every kernel queued before it."""

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn

from engine.preemption import StopRequest
from engine.setup import build_optimizer
from engine.trainer import Trainer
from model.distiller import Distiller
from model.methods import METHODS
from model.pspnet import PSPNet
from util.config import load_config
from util.distributed import DistInfo, MaxVote

CLASSES = 3
KD = "config/synthetic/pspnet18_kd.yaml"
SYNCS = ("aten::_local_scalar_dense", "aten::item", "aten::nonzero")
# the distributed path (stop-signal vote, connector gradients averaged) of a 2-process job, on a 1-process group
TWO = DistInfo(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))


class TinyBackbone(nn.Module):
    channels = {"layer1": 4, "layer2": 4, "layer3": 8, "layer4": 16}

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=8, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.layer2 = nn.Conv2d(4, 4, 3, padding=1)
        self.layer3 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer4 = nn.Conv2d(8, 16, 3, padding=1)

    def forward(self, x, keep=()):  # every stage is returned anyway (afd asks for layer1, layer2 with keep)
        c1 = self.stem(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return {"layer1": c1, "layer2": c2, "layer3": c3, "layer4": self.layer4(c3)}


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class Sampler:
    def __init__(self, n):
        self.n = n

    def set_epoch(self, epoch, skip=0):
        pass

    def __len__(self):
        return self.n


class Batches(list):
    batch_size = 2


def trainer_for(tmp_path, *overrides) -> Trainer:
    """Three iterations, a flush only after the last (log_every and checkpoint_every beyond them)."""
    cfg = load_config(KD, [f"data.classes={CLASSES}", "data.root=unused", f"output.dir={tmp_path}",
                           "train.batch_size=2", "train.crop_size=32", "train.iters=3", "train.log_every=100",
                           "train.checkpoint_every=100", *overrides])
    torch.manual_seed(0)
    nets = [PSPNet(TinyBackbone(), CLASSES, bins=(1, 2)) for _ in range(2)]
    student, teacher = nets
    distiller = Distiller.from_config(student, teacher, cfg)
    g = torch.Generator().manual_seed(1)
    batches = Batches()
    for _ in range(3):
        target = torch.randint(0, CLASSES, (2, 32, 32), generator=g)
        target[:, :5] = 255  # ignored pixels, as every real batch has
        batches.append((torch.randn(2, 3, 32, 32, generator=g), target))
    meta = {"format": "segkd", "mode": "distill", "layers": 18, "classes": CLASSES}
    optimizer = build_optimizer(student, cfg, distiller.trainable_parameters())
    return Trainer(cfg, TWO, distiller, optimizer, batches, Sampler(6), None, meta)


CASES = ([["distill.terms=" + m] for m in sorted(METHODS)]
         + [["distill.feat_loss=" + f] for f in ("cwd", "dist", "kl_std", "smoothl1")]
         + [["distill.kd_loss=dist"]])


def syncs_outside_flush(trainer: Trainer) -> list[str]:
    flush = trainer.flush

    def marked_flush():
        with torch.profiler.record_function("segkd.flush"):
            return flush()

    trainer.flush = marked_flush
    stop = StopRequest()
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            assert trainer.train_one_epoch(0, stop) is None
    finally:
        stop.restore()
    assert trainer.iteration == 3
    events = prof.events()
    flushes = [e.time_range for e in events if e.name == "segkd.flush"]
    assert len(flushes) == 1  # after the last iteration only

    def inside(e):
        return any(r.start <= e.time_range.start and e.time_range.end <= r.end for r in flushes)

    return [e.name for e in events if e.name in SYNCS and not inside(e)]


@pytest.mark.slow  # runs Trainer.step
@pytest.mark.parametrize("overrides", CASES, ids=[c[0].split(".")[1] for c in CASES])
def test_no_host_sync_in_a_training_iteration(tmp_path, one_process_group, overrides):
    assert syncs_outside_flush(trainer_for(tmp_path, *overrides)) == []


def test_the_stop_vote_is_read_without_a_scalar_read(one_process_group):
    """MaxVote: started and read with no item() (its value comes from a host tensor through NumPy)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert MaxVote(15, torch.device("cpu")).result() == 15
    assert not [e.name for e in prof.events() if e.name in SYNCS]
    assert MaxVote(2, torch.device("cpu")).result() == 2


def test_a_signal_is_agreed_one_step_late(one_process_group, tmp_path):
    """Every rank reads the vote of the step before: the stop comes one step after the signal, on every rank."""
    trainer = SimpleNamespace(info=TWO, _vote=None)
    agreed = [Trainer.agreed_signal(trainer, s) for s in (None, 15, None, None)]
    assert agreed == [0, 0, 15, 0]
