"""Throughput benchmark: teacher training, student training, distillation, evaluation, and the data loader.

    python -m tools.benchmark --config config/voc2012/pspnet18_kd.yaml --crop 473 --batch 16 train.amp=true
    python -m tools.benchmark --config config/synthetic/pspnet18_kd.yaml --crop 65 --batch 2 --steps 3   # CPU smoke

Model steps run on random tensors (no dataset, no teacher checkpoint needed: both networks are randomly
initialised, which costs the same). For each mode it reports images/s, step time, peak memory, achieved
TFLOP/s and the fraction of the device's peak. FLOPs per image are counted once with ``FlopCounterMode`` on
the meta device (no compute); the peak is ``--peak-tflops`` or measured with a large matmul in the step's
dtype. With ``data.root`` set, the data loader's images/s is measured for each ``--workers`` count.
Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from typing import Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.distiller import Distiller
from model.pspnet import build_pspnet
from util.config import Config, load_config
from util.distributed import pick_device
from util.errors import SegKDError

MODES = ("teacher_train", "student_train", "distill", "eval")


def make_step(mode: str, cfg: Config, device: torch.device, batch: int, crop: int, meta: bool = False):
    """A closure running one step of ``mode`` on random data, and the models it uses."""
    classes = cfg.data.classes
    ctx = torch.device("meta") if meta else contextlib.nullcontext()
    with ctx:
        student = build_pspnet(cfg.teacher.layers if mode == "teacher_train" else cfg.model.layers, classes)
        teacher = build_pspnet(cfg.teacher.layers, classes) if mode == "distill" else None
    student, teacher = (student.to(device), teacher.to(device) if teacher is not None else None)
    if cfg.train.channels_last:
        student = student.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last) if teacher is not None else None
    if cfg.train.compile and not meta:
        torch._dynamo.config.suppress_errors = True  # fall back to eager instead of failing
        student.compile()
        if teacher is not None:
            teacher.compile()
    distiller = Distiller.from_config(student, teacher, cfg)
    opt = torch.optim.SGD(student.parameters(), lr=1e-4, momentum=0.9) if not meta else None
    x = torch.randn(batch, 3, crop, crop, device=device)
    if cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch, crop, crop), device=device)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.train.amp_dtype]

    def autocast():
        # FLOPs do not depend on the dtype: the meta-device count runs without autocast
        use = cfg.train.amp and not meta
        return torch.autocast(device.type, dtype=dtype) if use else contextlib.nullcontext()

    def step() -> None:
        if mode == "eval":
            with torch.inference_mode(), autocast():
                student.eval()(x)
            return
        distiller.train()
        with autocast():
            total, _ = distiller(x, y)
        total.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def flops_per_image(mode: str, cfg: Config, crop: int) -> float:
    """FLOPs of one step divided by the batch (2: BatchNorm needs more than one sample), on meta tensors."""
    step = make_step(mode, cfg, torch.device("meta"), 2, crop, meta=True)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / 2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per step after ``warmup`` untimed steps."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def measure_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """An achievable peak to compare the model steps against: the faster of a large dense matmul and a
    large 3x3 convolution in the step's dtype (on CPUs oneDNN's convolutions can beat its matmul)."""
    n, c, hw = (4096, 512, 64) if device.type == "cuda" else (2048, 256, 32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    matmul = 2 * n**3 / time_steps(lambda: a @ b, device, 3, 10)
    x = torch.randn(8, c, hw, hw, device=device, dtype=dtype)
    w = torch.randn(c, c, 3, 3, device=device, dtype=dtype)
    with torch.inference_mode():
        conv = 2 * 8 * c * c * 9 * hw * hw / time_steps(lambda: torch.conv2d(x, w, padding=1), device, 3, 10)
    return max(matmul, conv) / 1e12


def bench_models(cfg: Config, args, device: torch.device, peak: float) -> list[dict]:
    rows = []
    for mode in args.modes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step = make_step(mode, cfg, device, args.batch, args.crop)
        seconds = time_steps(step, device, args.warmup, args.steps)
        flops = flops_per_image(mode, cfg, args.crop)
        tflops = flops * args.batch / seconds / 1e12
        rows.append({
            "mode": mode, "images_per_s": args.batch / seconds, "step_ms": seconds * 1e3,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "gflop_per_image": flops / 1e9, "tflops": tflops, "fraction_of_peak": tflops / peak,
        })
        del step
    return rows


def bench_loader(cfg: Config, args) -> list[dict]:
    """Images/s of the training data pipeline (augmentation included) for each worker count."""
    from data.dataset import SegDataset
    from data.loader import build_train_loader
    from data.transforms import build_train_transform

    d = cfg.data
    transform = build_train_transform(args.crop, (d.scale_min, d.scale_max), (d.rotate_min, d.rotate_max),
                                      d.ignore_label, uint8=cfg.train.uint8_batches)
    dataset = SegDataset(d.root, d.train_list, d.classes, d.ignore_label, transform)
    rows = []
    for workers in args.workers:
        loader, sampler = build_train_loader(dataset, args.batch, workers, 0, 0, 1, pin_memory=False)
        sampler.set_epoch(0)
        batches = min(args.loader_batches, len(loader))
        it = iter(loader)
        next(it)  # worker start-up is not throughput
        start = time.perf_counter()
        for _ in range(batches - 1):
            next(it)
        seconds = time.perf_counter() - start
        rows.append({"workers": workers, "images_per_s": (batches - 1) * args.batch / max(seconds, 1e-9)})
        del it, loader
    return rows


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    return {"device": name, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def format_tables(result: dict) -> str:
    lines = [f"device: {result['env']['device']}  torch {result['env']['torch']}  crop {result['crop']}  "
             f"batch {result['batch']}  amp {result['amp']}  channels_last {result['channels_last']}  "
             f"compile {result['compile']}  peak {result['peak_tflops']:.2f} TFLOP/s ({result['peak_source']})",
             "| mode | images/s | step ms | peak mem GiB | GFLOP/image | TFLOP/s | of peak |",
             "|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        lines.append(f"| {r['mode']} | {r['images_per_s']:.2f} | {r['step_ms']:.1f} | {mem} "
                     f"| {r['gflop_per_image']:.0f} | {r['tflops']:.2f} | {r['fraction_of_peak'] * 100:.1f}% |")
    if result["loader"]:
        lines += ["", "| loader workers | images/s |", "|---|---|"]
        lines += [f"| {r['workers']} | {r['images_per_s']:.1f} |" for r in result["loader"]]
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="experiment YAML (model depths, classes, amp, data.root)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.amp=true train.channels_last=true")
    p.add_argument("--crop", type=int, default=473)
    p.add_argument("--batch", type=int, default=16, help="images per step on this one device")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    p.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[0, 2, 4, 8])
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak; default: measured by a matmul")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config, args.overrides)
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        raise SegKDError(f"--modes: unknown mode {bad[0]!r}; choose from {', '.join(MODES)}")
    if args.crop < 32 or args.batch < 2:
        raise SegKDError(f"--crop {args.crop} / --batch {args.batch}: need crop >= 32 and batch >= 2 (BatchNorm)")
    device = pick_device(cfg.train.device, 0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = torch.float32
    if cfg.train.amp:
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.train.amp_dtype]
    peak = args.peak_tflops or measure_peak_tflops(device, dtype)
    result = {"env": environment(device), "crop": args.crop, "batch": args.batch,
              "amp": cfg.train.amp and cfg.train.amp_dtype,
              "channels_last": cfg.train.channels_last, "compile": cfg.train.compile, "peak_tflops": peak,
              "peak_source": "given" if args.peak_tflops else f"measured: {dtype} matmul/conv",
              "models": bench_models(cfg, args, device, peak),
              "loader": bench_loader(cfg, args) if cfg.data.root is not None and args.workers else [],
              "command": " ".join(sys.argv)}
    return result


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = parse_args(argv)
        result = run(args)
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_tables(result))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
