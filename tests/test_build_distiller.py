"""engine.setup.build_distiller under torchrun (2 gloo processes on CPU): the student is wrapped in DDP, the teacher is
neither DDP nor SyncBN, frozen and in eval mode, and both start identical on every rank. SyncBN conversion
of the student happens only on several GPUs (train.sync_bn on CUDA), which this CPU-only suite cannot run:
there, the test checks that no BN was converted."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model.pspnet import build_pspnet
from util.checkpoint import save_checkpoint

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
