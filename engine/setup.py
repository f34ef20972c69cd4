"""What a training run is made of, built from its config: the data loader, the distiller (student wrapped
for the device and the processes, frozen teacher) and the optimizer. ``train.py`` and the benchmark
(tools/benchmark.py) both build through these functions, so the benchmark measures training."""

from __future__ import annotations

from typing import Optional, Union

import torch

from data.dataset import SegDataset, UnlabeledDataset
from data.loader import build_train_loader, collate_crops
from data.transforms import build_train_transform
from model.build import build_model, load_teacher
from model.distiller import Distiller
from model.mutual import MutualLearner
from model.teacher_cache import TeacherCache, file_digest
from util.config import Config, unlabeled_per_process
from util.distributed import DistInfo, unwrap
from util.errors import SegKDError


def build_data(cfg: Config, info: DistInfo):
    """The training loader and its sampler. Batches are (images Bx3xHxW float32 normalised, or uint8 with
    ``train.uint8_batches``; labels BxHxW uint8, made int64 on the device by the trainer): ``collate_crops``. With
    ``data.unlabeled_list``, each process's batch ends with ``unlabeled_per_process`` images of that pool, their
    labels UNLABELED_LABEL (util/config.py) where the image is and ignore in the crop's padding."""
    d, t = cfg.data, cfg.train
    transform = build_train_transform(t.crop_size, (d.scale_min, d.scale_max), (d.rotate_min, d.rotate_max),
                                      d.ignore_label, uint8=t.uint8_batches, to_tensor=False,
                                      opencv_threads=d.opencv_threads)
    dataset = SegDataset(d.root, d.train_list, d.classes, d.ignore_label, transform, to_tensor=False)
    per_rank = t.batch_size // info.world_size
    pool, per_batch = None, 0
    if d.unlabeled_list is not None:  # SSLD: the last per_batch images of each batch from the pool
        pool = UnlabeledDataset(d.root, d.unlabeled_list, transform, to_tensor=False)
        per_batch = unlabeled_per_process(d.unlabeled_ratio, per_rank)
        if len(pool) < info.world_size:
            raise SegKDError(f"data.unlabeled_list={d.unlabeled_list}: {len(pool)} image(s) for "
                             f"{info.world_size} processes; each needs at least one")
    if len(dataset) // info.world_size < per_rank - per_batch:
        raise SegKDError(f"{d.train_list}: {len(dataset)} samples cannot fill one batch of train.batch_size="
                         f"{t.batch_size} over {info.world_size} process(es)"
                         + (f" ({per_batch} of each process's {per_rank} unlabelled)" if per_batch else ""))
    return build_train_loader(dataset, per_rank, t.workers, t.seed, info.rank, info.world_size,
                              pin_memory=info.device.type == "cuda", collate_fn=collate_crops,
                              unlabeled=pool, unlabeled_per_batch=per_batch, opencv_threads=d.opencv_threads)


def build_distiller(cfg: Config, info: DistInfo) -> Union[Distiller, MutualLearner]:
    """Student (SyncBN on several GPUs, compiled if asked, DDP) and the frozen teacher (none of those); with
    ``mutual.peers``, the peers instead (:func:`build_mutual`)."""
    if cfg.mutual.peers:
        return build_mutual(cfg, info)
    student = build_model(cfg)
    teacher = load_teacher(cfg) if cfg.teacher.checkpoint else None
    student, teacher = prepare_models(student, teacher, cfg, info)
    cache = None
    if teacher is not None and cfg.distill.teacher_cache is not None:
        cache = TeacherCache(cfg.distill.teacher_cache, file_digest(cfg.teacher.checkpoint))
    distiller = Distiller.from_config(student, teacher, cfg, cache)
    prepare_methods(distiller.methods, cfg, info)
    return distiller


def uses_sync_bn(cfg: Config, info: DistInfo) -> bool:
    """SyncBatchNorm for the student (and the methods' connectors): several CUDA processes and ``train.sync_bn``."""
    return info.distributed and info.device.type == "cuda" and cfg.train.sync_bn


def prepare_methods(methods: torch.nn.Module, cfg: Config, info: DistInfo) -> torch.nn.Module:
    """The distillation methods' connectors beside the student: on its device, and their BatchNorm in SyncBN when
    the student's is (:func:`uses_sync_bn`), so FitNets' connector normalises over the batch the student's BN sees.
    In place; returns ``methods``."""
    methods.to(info.device)
    if uses_sync_bn(cfg, info):
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(methods)  # a ModuleDict: its children converted in place
    return methods


def build_mutual(cfg: Config, info: DistInfo) -> MutualLearner:
    """Peer 0 from ``model.*``, then one network per depth of ``mutual.peers`` with the same keys, built one after
    the other from the seeded RNG (so their random layers start different); each prepared as a student, with its
    own SyncBN, compile and DDP module (DDP averages each peer's gradients on its own)."""
    nets = [build_model(cfg), *(build_model(cfg, layers) for layers in cfg.mutual.peers)]
    return MutualLearner.from_config([prepare_models(net, None, cfg, info)[0] for net in nets], cfg)


def prepare_models(student: torch.nn.Module, teacher: Optional[torch.nn.Module], cfg: Config,
                   info: DistInfo) -> tuple[torch.nn.Module, Optional[torch.nn.Module]]:
    """Both on the device, channels_last and compiled if asked; the student alone gets SyncBN (several GPUs) and
    DDP (several processes). The benchmark prepares its randomly initialised networks through this too."""
    student = student.to(info.device)
    teacher = teacher.to(info.device) if teacher is not None else None
    if cfg.train.channels_last:
        student = student.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last) if teacher is not None else None
    if uses_sync_bn(cfg, info):
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
    if cfg.train.compile:
        torch._dynamo.config.suppress_errors = True  # a graph that fails to compile runs eagerly instead
        student.compile()  # in place: the state dict keeps its keys
        if teacher is not None:
            teacher.compile()
    if info.distributed:
        ids = [info.local_rank] if info.device.type == "cuda" else None
        student = torch.nn.parallel.DistributedDataParallel(student, device_ids=ids)
    return student, teacher


def build_optimizer(student: torch.nn.Module, cfg: Config,
                    extra: Optional[list[torch.nn.Parameter]] = None) -> torch.optim.Optimizer:
    """``train.optimizer`` (SGD with momentum, or AdamW), backbone at base_lr and the new layers (PPM,
    heads) at base_lr * head_lr_mult; ``extra`` (the distillation methods' connectors, new layers too) in a
    third group at base_lr * head_lr_mult, present only when there are any. ``student`` may be a ModuleList
    (the peers of a mutual run): each network then gets its two groups, in order. SGD and AdamW keep their state
    per parameter and the trainer's poly schedule scales every group alike, so this equals one optimizer per peer."""
    t = cfg.train
    head_lr = t.base_lr * t.head_lr_mult
    nets = list(student) if isinstance(student, torch.nn.ModuleList) else [student]
    groups = []
    for net in nets:
        backbone, heads = unwrap(net).param_groups()
        groups += [{"params": backbone, "lr": t.base_lr, "initial_lr": t.base_lr},
                   {"params": heads, "lr": head_lr, "initial_lr": head_lr}]
    if extra:
        groups.append({"params": list(extra), "lr": head_lr, "initial_lr": head_lr})
    # train.fused_optimizer: torch's fused step, one kernel per tensor instead of a loop of element-wise operations
    # (AdamW: the R50 teacher's CPU step 16-27% shorter, docs/results/LOG.md); fused AdamW rounds differently from
    # the loop, so it is off by default and a run's tables do not mix the two. Off passes nothing: torch's own
    # default (the loop on CPU), as before the key, on any torch of requirements.txt's floor.
    fused = {"fused": True} if t.fused_optimizer else {}
    try:
        if t.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=t.base_lr, betas=(0.9, 0.999), weight_decay=t.weight_decay, **fused)
        return torch.optim.SGD(groups, lr=t.base_lr, momentum=t.momentum, weight_decay=t.weight_decay, **fused)
    except RuntimeError as e:  # a torch without a fused kernel for this device (older releases had none on CPU)
        if not fused:
            raise
        device = groups[0]["params"][0].device.type if groups and groups[0]["params"] else "?"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SegKDError(f"train.fused_optimizer=true: torch {torch.__version__} has no fused {t.optimizer} step "
                         f"for {device} parameters ({first}); set train.fused_optimizer=false") from e
