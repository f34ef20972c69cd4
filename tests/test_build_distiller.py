"""engine.setup.build_distiller under torchrun (2 gloo processes on CPU): the student is wrapped in DDP, the teacher is
neither DDP nor SyncBN, frozen and in eval mode, and both start identical on every rank. SyncBN conversion
of the student happens only on several GPUs (train.sync_bn on CUDA): the 2-process test checks that no BN was
converted on the CPU, and the stubbed-CUDA test below that on several GPUs the student alone is converted."""

import copy
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from engine.setup import prepare_models
from model.pspnet import build_pspnet
from util.checkpoint import save_checkpoint
from util.config import load_config
from util.distributed import DistInfo

KD = "config/synthetic/pspnet18_kd_aux_kl.yaml"


def _rank(rank, init_file, teacher_path, out):
    from engine.setup import build_distiller
    from util.config import load_config
    from util.distributed import DistInfo

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # as train.py seeds before building: identical initial weights on every rank
        cfg = load_config(KD, ["data.classes=4", f"teacher.checkpoint={teacher_path}", "data.root=unused",
                               "output.dir=unused"])
        d = build_distiller(cfg, DistInfo(rank=rank, local_rank=rank, world_size=2, device=torch.device("cpu")))
        d.train()
        plain = d.student.module if isinstance(d.student, torch.nn.parallel.DistributedDataParallel) else None
        checksum = float(sum(p.detach().double().sum() for p in d.student.parameters()))
        result = {
            "student_ddp": plain is not None,
            "teacher_ddp": isinstance(d.teacher, torch.nn.parallel.DistributedDataParallel),
            "syncbn": sum(isinstance(m, torch.nn.SyncBatchNorm) for m in d.modules()),
            "teacher_trainable": sum(p.requires_grad for p in d.teacher.parameters()),
            "teacher_training": d.teacher.training,
            "student_training": d.student.training,
            "teacher_is_student_part": any(m is d.teacher for m in d.student.modules()),
            "checksum": checksum,
            "teacher_checksum": float(sum(p.double().sum() for p in d.teacher.parameters())),
        }
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


@pytest.mark.slow
def test_wiring_under_two_processes(tmp_path):
    torch.manual_seed(1)
    teacher = build_pspnet(50, 4)
    path = str(tmp_path / "teacher.pth")
    save_checkpoint({"format": "segkd", "mode": "supervised", "layers": 50, "classes": 4,
                     "model": teacher.state_dict()}, path)
    out = tmp_path / "out"
    out.mkdir()
    mp.start_processes(_rank, args=(str(tmp_path / "init"), path, str(out)), nprocs=2, start_method="spawn")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["student_ddp"] and not r["teacher_ddp"] and r["syncbn"] == 0
        assert r["teacher_trainable"] == 0 and not r["teacher_training"] and r["student_training"]
        assert not r["teacher_is_student_part"]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    expected = float(sum(p.detach().double().sum() for p in teacher.parameters()))
    assert ranks[0]["teacher_checksum"] == ranks[1]["teacher_checksum"] == pytest.approx(expected, rel=1e-12)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    return build_pspnet(18, 4), build_pspnet(18, 4)


class FakeDDP(nn.Module):
    """Stands in for DistributedDataParallel (which needs a process group): records what it wraps."""

    def __init__(self, module, device_ids=None):
        super().__init__()
        self.module, self.device_ids = module, device_ids


@pytest.mark.parametrize("world_size, device, sync_bn, converted", [
    (2, "cuda", True, True),  # several GPUs: the student (alone) in SyncBN
    (2, "cuda", False, False),  # train.sync_bn=false
    (1, "cuda", True, False),  # one GPU: nothing to synchronise
    (2, "cpu", True, False),  # gloo on CPUs: SyncBatchNorm is CUDA-only
])
def test_syncbn_converts_the_student_only(pair, monkeypatch, world_size, device, sync_bn, converted):
    """prepare_models with the process layout of several GPUs, stubbed: the moves to the GPU and DDP are recorded
    instead of done; torch's own conversion runs (it works on CPU modules) and every call of it is recorded."""
    student, teacher = copy.deepcopy(pair[0]), pair[1]
    calls, moves, depth = [], [], [0]
    real_convert, real_to = nn.SyncBatchNorm.convert_sync_batchnorm, nn.Module.to

    def convert(module, process_group=None):
        if depth[0] == 0:  # the call prepare_models makes, not torch's recursion into the children
            calls.append(module)
        depth[0] += 1
        try:
            return real_convert(module, process_group)
        finally:
            depth[0] -= 1

    def to(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            moves.append((self, args[0]))
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(nn.SyncBatchNorm, "convert_sync_batchnorm", convert)
    monkeypatch.setattr(nn.Module, "to", to)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    cfg = load_config(KD, ["data.classes=4", f"train.sync_bn={str(sync_bn).lower()}"])
    gpu = torch.device("cuda", 1) if device == "cuda" else torch.device("cpu")
    info = DistInfo(rank=1, local_rank=1, world_size=world_size, device=gpu)
    got_student, got_teacher = prepare_models(student, teacher, cfg, info)

    assert len(calls) == int(converted) and all(module is student for module in calls)
    assert got_teacher is teacher and not any(isinstance(m, nn.SyncBatchNorm) for m in teacher.modules())
    inner = got_student.module if world_size > 1 else got_student
    assert isinstance(got_student, FakeDDP) == (world_size > 1) and inner is student
    if world_size > 1:
        assert got_student.device_ids == ([1] if device == "cuda" else None)
    bns = [m for m in student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, nn.SyncBatchNorm) == converted for m in bns)
    if device == "cuda":
        assert [(m is student or m is teacher, d.index) for m, d in moves] == [(True, 1), (True, 1)]
        assert moves[0][0] is student and moves[1][0] is teacher
