"""Batch-coupled terms (issue 41): CIRKD's mini-batch relations and DIST's intra-class term see this process's share
of the batch by default; ``distill.cirkd.global_batch`` / ``distill.dist_global_batch`` compute them over every
process's images (util/distributed.py:all_gather_with_grad). Two Gloo processes on the two halves of a batch then
give one process's value on the whole batch, and DDP's average of their gradients is that process's gradient. A switch
no term uses is one line naming the key; FitNets' connector follows the student's SyncBN."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from engine.setup import prepare_methods
from model.losses import dist_loss
from model.methods.cirkd import CIRKD
from model.methods.fitnet import FitNet
from util.config import check_training, load_config
from util.distributed import DistInfo
from util.errors import SegKDError

KD = "config/synthetic/pspnet18_kd.yaml"
WORLD = 2


def batch_of_four():
    """4 images: features (student 6, teacher 8 channels, 5x5) and logits (3 classes, 5x5) with labels at 40x40."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 6, 5, 5, generator=g), torch.randn(4, 8, 5, 5, generator=g)
    logits = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    target = torch.randint(0, 3, (4, 40, 40), generator=g)
    target[0, :20] = 255
    target[3, :, 30:] = 255
    return feats, logits, target


def terms(part: slice, global_batch: bool) -> dict[str, list[float]]:
    """Both terms on the images ``part``, with a shared per-channel shift standing for the student's weights (cosine
    similarities ignore a scale, not a shift): values and the shift's gradient."""
    (fs, ft), (ls, lt), target = batch_of_four()
    out = {}
    for name in ("cirkd", "dist"):
        x = fs if name == "cirkd" else ls
        shift = nn.Parameter(torch.linspace(-0.5, 0.5, x.shape[1])[:, None, None])
        if name == "cirkd":
            value = CIRKD(6, 8, 3, global_batch=global_batch)(fs[part] + shift, ft[part], target[part])
        else:
            value = dist_loss(ls[part] + shift, lt[part], target[part], global_batch=global_batch)
        value.backward()
        out[name], out[name + "_grad"] = [value.item()], shift.grad.flatten().tolist()
    return out


def _rank(rank, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        result = {}
        for flag in (False, True):
            result[str(flag)] = terms(slice(2 * rank, 2 * rank + 2), flag)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


@pytest.mark.slow  # starts two processes
def test_two_processes_with_global_batch_equal_one_process_on_the_whole_batch(tmp_path):
    mp.start_processes(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    one = terms(slice(0, 4), False)  # one process, the whole batch (no process group: the switch changes nothing)
    for name in ("cirkd", "dist"):
        gathered = [r["True"] for r in ranks]
        for r in gathered:  # every rank computes the whole batch's value
            assert r[name] == pytest.approx(one[name], rel=1e-6)
        ddp_grad = torch.tensor([r[name + "_grad"] for r in gathered]).mean(0)  # DDP's average over the ranks
        assert torch.allclose(ddp_grad, torch.tensor(one[name + "_grad"]), rtol=1e-4, atol=1e-7), name
        assert torch.tensor(one[name + "_grad"]).abs().max() > 1e-3  # a gradient worth comparing
        per_process = sum(r["False"][name][0] for r in ranks) / WORLD  # the default: the mean of the halves' terms
        assert per_process != pytest.approx(one[name][0], rel=1e-3)


def test_a_global_batch_switch_no_term_uses_is_one_line_naming_the_key():
    with pytest.raises(SegKDError, match=r"unknown config key 'distill\.skd\.global_batch'"):
        load_config(KD, ["distill.skd.global_batch=true"])  # SKD has no batch-coupled term
    base = ["data.root=unused", "output.dir=unused"]
    cfg = load_config(KD, [*base, "distill.dist_global_batch=true"])
    with pytest.raises(SegKDError, match=r"^distill\.dist_global_batch=true: no term of this run uses DIST") as e:
        check_training(cfg, 1, False, "cpu")
    assert "\n" not in str(e.value)
    cfg = load_config(KD, [*base, "distill.cirkd.global_batch=true"])
    with pytest.raises(SegKDError, match=r"^distill\.cirkd\.global_batch=true: cirkd is not in distill\.terms"):
        check_training(cfg, 1, False, "cpu")
    for ok in (["distill.dist_global_batch=true", "distill.feat_loss=dist"],
               ["distill.cirkd.global_batch=true", "distill.terms=[cirkd]"]):
        check_training(load_config(KD, [*base, *ok]), 1, False, "cpu")


@pytest.mark.parametrize("world_size, device, sync_bn, converted", [
    (2, "cuda", True, True), (2, "cuda", False, False), (1, "cuda", True, False), (2, "cpu", True, False)])
def test_the_fitnet_connector_follows_the_students_syncbn(monkeypatch, world_size, device, sync_bn, converted):
    """engine/setup.py:prepare_methods with the layout of several GPUs, stubbed (the move to the GPU recorded)."""
    methods = nn.ModuleDict({"fitnet": FitNet(6, 8, 3)})
    real_to = nn.Module.to
    monkeypatch.setattr(nn.Module, "to", lambda self, *a, **k: self if a and getattr(a[0], "type", "") == "cuda"
                        else real_to(self, *a, **k))
    cfg = load_config(KD, [f"train.sync_bn={str(sync_bn).lower()}"])
    info = DistInfo(rank=1, local_rank=1, world_size=world_size, device=torch.device(device, 1 if device == "cuda"
                                                                                     else None))
    assert prepare_methods(methods, cfg, info) is methods
    bns = [m for m in methods.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 1 and isinstance(bns[0], nn.SyncBatchNorm) == converted
