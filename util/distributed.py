"""Distributed helpers with no global state: everything is read from torchrun's environment variables.

One process per device. ``torchrun --nproc_per_node=N train.py ...`` sets RANK, LOCAL_RANK, WORLD_SIZE;
a plain ``python train.py`` runs as a world of one without initialising a process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(choice: str, local_rank: int) -> torch.device:
    """``auto`` -> this process's GPU when CUDA is available, else the CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from util.errors import SegKDError

            raise SegKDError("train.device=cuda but CUDA is not available on this machine")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_choice: str = "auto") -> DistInfo:
    """Join the process group if launched by torchrun: NCCL on CUDA, Gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_choice, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        timeout = timedelta(minutes=30)
        store = restart_round_store(timeout)
        if store is not None:
            kwargs.update(store=store, rank=rank, world_size=world_size)
        dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    return DistInfo(rank, local_rank, world_size, device)


def restart_round_store(timeout: timedelta):
    """The store of this restart round, or None for torch's default (``env://``).

    torchrun (torch >= 2.4) by default hands its workers the rendezvous's own TCPStore
    (``TORCHELASTIC_USE_AGENT_STORE=True``) and keeps it across the restart rounds of ``--max-restarts``. The
    process group's keys (each rank's gloo/NCCL address) carry no round, so a worker of the restarted group can read
    a dead worker's address and fail in ``connectFullMesh`` ("Connection refused"; 5 tries of 6, docs/RELIABILITY.md).
    Keys under ``segkd/round<TORCHELASTIC_RESTART_COUNT>/`` are this round's alone. On several nodes the agents'
    restart counts can differ (a node restarted because another failed does not count it), so ``tools.launch``
    gives every round a store of its own instead (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``) and this is not used."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    return dist.PrefixStore(f"segkd/round{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor, world_size: int) -> torch.Tensor:
    """The mean over processes of a tensor (one collective), brought to the CPU: the caller's one host sync."""
    values = values.detach().float()
    if world_size > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= world_size
    return values.cpu()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over processes of a tensor, as a new tensor on the tensor's own device (``values`` itself
    without a process group); ``values`` is left unchanged. NCCL reduces only CUDA tensors, so a CPU tensor
    makes the round trip through this rank's GPU."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    out = values.to("cuda", copy=True) if dist.get_backend() == "nccl" else values.clone()
    dist.all_reduce(out)
    return out.to(values.device)


def average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """Average the gradients of parameters that DDP does not own (the distillation methods' connectors)
    over the processes, in place, in one collective, so every rank takes the same optimizer step."""
    grads = [p.grad for p in params if p.grad is not None]
    if world_size < 2 or not grads or not (dist.is_available() and dist.is_initialized()):
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat = all_reduce_sum(flat) / world_size
    for g, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(chunk.view_as(g))


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is True on any rank (used to stop all ranks together)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_max(value: int, device: torch.device) -> int:
    """The largest of every rank's ``value`` (the value itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


class MaxVote:
    """The largest of every rank's ``value``, all-reduced asynchronously: started now, read later with
    :meth:`result` (``value`` itself without a process group). The trainer starts one per step and reads it
    after the next step is queued, so the host waits for the step before last, never for the one it just queued:
    a GPU keeps a step of work ahead, and every rank reads the same vote at the same iteration."""

    def __init__(self, value: int, device: torch.device):
        self.value, self.device, self.work = value, device, None
        if not (dist.is_available() and dist.is_initialized()):
            return
        # a fill kernel, not torch.tensor([value]): a host-to-device copy from Python waits for the stream
        self.tensor = torch.full((1,), value, dtype=torch.int32, device=device)
        self.work = dist.all_reduce(self.tensor, op=dist.ReduceOp.MAX, async_op=True)
        self.host = self.tensor
        if device.type == "cuda":
            self.work.wait()  # NCCL: the current stream waits for the collective, the host does not
            self.host = torch.empty(1, dtype=torch.int32, pin_memory=True)
            self.host.copy_(self.tensor, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()

    def result(self) -> int:
        """The agreed value: waits for the collective (and, on a GPU, for the copy queued behind it)."""
        if self.work is None:
            return self.value
        if self.device.type == "cuda":
            self.event.synchronize()
        else:
            self.work.wait()
        return int(self.host.numpy()[0])  # numpy: a host tensor's value without a dispatched item()


class _GatherLocalGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world, ctx.n = dist.get_rank(), dist.get_world_size(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n] * ctx.world


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (same shape on every rank) concatenated along dim 0 in rank order: the global batch of a
    batch-coupled loss term (``x`` itself without a process group). The gradient flows to this rank's part only,
    times the world size: each rank computes the same global term, so DDP's average of the ranks' gradients is then
    the gradient one process would get on the whole batch (SimCLR-style gathering; the other ranks' parts are
    constants here, their own ranks give them their gradient)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherLocalGrad.apply(x)


def all_gather_objects(obj: Any, world_size: int) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's picklable ``obj`` on every rank (``obj`` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP and/or torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
