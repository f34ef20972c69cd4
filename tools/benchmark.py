"""Throughput benchmark: teacher training, student training, distillation, evaluation, and the data loader.

    python -m tools.benchmark --config config/voc2012/pspnet18_kd.yaml --crop 473 --batch 16 train.amp=true
    python -m tools.benchmark --config config/synthetic/pspnet18_kd.yaml --crop 65 --batch 2 --steps 3   # CPU smoke
    python -m tools.benchmark --modes loader --config config/voc2012/pspnet50_teacher.yaml --workers 0,1,2 --levers

Model steps run on random tensors (no dataset, no teacher
checkpoint needed: both networks are randomly initialised, which costs the same). Everything else is training's
own code, so the benchmark cannot time something training does not run: the networks are built by
``model.build.build_model`` (the teacher as ``load_teacher`` rebuilds it), put on the device, channels_last,
SyncBN, compiled and wrapped by ``engine.setup.prepare_models``; the optimizer is ``engine.setup.build_optimizer``
(``train.optimizer``, both parameter groups); a step is the trainer's (autocast, the float16 GradScaler); the
loader is ``engine.setup.build_data``. ``--crop`` and ``--batch`` become ``train.crop_size`` and
``train.batch_size``. The eval row is test.py's: the fp32 network without switches, ``window_probs`` on
crop-sized windows (no aux head).

For each mode it reports images/s, step time, peak memory, achieved TFLOP/s and the fraction of the device's
peak. FLOPs per image are counted once with ``FlopCounterMode`` on the meta device (no compute); the peak is
``--peak-tflops`` or measured with a large matmul in the step's dtype. With ``data.root`` set, the data loader's
images/s is measured for each ``--workers`` count. Prints a table and writes JSON (``--out``).

``--modes loader`` runs the training loader against hszhao/semseg's, side by side on generated VOC-sized data, at
the config's crop and batch (``--crop``/``--batch``) for each ``--workers`` count, ``--repeats`` times interleaved;
``--levers`` adds one row per change between segkd's earlier loader and today's (tools/loader_bench.py).
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
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from engine.inference import window_probs
from engine.setup import build_data, build_optimizer, prepare_models
from model.build import arch_of, build_model, build_network
from model.distiller import Distiller
from model.pspnet import build_pspnet
from tools.loader_bench import format_loader, run_loader_benchmark
from util.config import Config, load_config
from util.distributed import DistInfo, pick_device
from util.errors import SegKDError

MODES = ("teacher_train", "student_train", "distill", "eval", "loader")
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def bench_config(args: argparse.Namespace, *extra: str) -> Config:
    """The experiment's config with ``--crop``/``--batch`` as the training crop and batch."""
    return load_config(args.config, [*args.overrides, f"train.crop_size={args.crop}",
                                     f"train.batch_size={args.batch}", *extra])


def build_networks(mode: str, cfg: Config) -> tuple[Config, nn.Module, Optional[nn.Module]]:
    """(config the step trains with, network trained or evaluated, teacher for ``distill`` else None), randomly
    initialised (ImageNet weights cost nothing per step and would need a download). ``teacher_train`` trains a
    model of the teacher's depth; evaluation's network is the configured architecture (``model.arch``,
    ``model.stem``, ...) as a checkpoint rebuilds it (``model.build._rebuild``), the teacher a PSPNet of
    ``teacher.layers`` (a real teacher's architecture comes from its checkpoint)."""
    tree = cfg.to_dict()
    tree["model"]["pretrained"] = False
    if mode == "teacher_train":
        tree["model"]["layers"] = cfg.teacher.layers  # a valid depth: teacher.layers has the same rule
    cfg = Config(tree)
    if mode == "eval":
        return cfg, build_network(arch_of(cfg.model.to_dict()), cfg.model.layers, cfg.data.classes), None
    teacher = build_pspnet(cfg.teacher.layers, cfg.data.classes) if mode == "distill" else None
    return cfg, build_model(cfg), teacher


def make_step(mode: str, cfg: Config, info: DistInfo, batch: int, crop: int) -> Callable[[], None]:
    """A closure running one step of ``mode`` on random data, with networks, optimizer and step as training's."""
    device = info.device
    x = torch.randn(batch, 3, crop, crop, device=device)
    cfg, student, teacher = build_networks(mode, cfg)
    if mode == "eval":
        model = student.to(device).eval()  # as test.py: fp32, no channels_last, not compiled
        return lambda: window_probs(model, x, flip=False, batch=batch)
    student, teacher = prepare_models(student, teacher, cfg, info)
    distiller = Distiller.from_config(student, teacher, cfg).train()
    distiller.methods.to(device)
    y = torch.randint(0, cfg.data.classes, (batch, crop, crop), device=device)
    return training_step(distiller, cfg, x, y)


def training_step(distiller: nn.Module, cfg: Config, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """A closure running one training step of ``distiller`` (a Distiller or MutualLearner, prepared on the device)
    on the batch ``x``, ``y``: the optimizer (``engine.setup.build_optimizer``, the methods' connectors in it) and
    the step as training's; tools/cost.py times this too."""
    optimizer = build_optimizer(distiller.student, cfg, distiller.trainable_parameters())
    t = cfg.train
    scaler = torch.amp.GradScaler(x.device.type, enabled=t.amp and t.amp_dtype == "float16")
    if t.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    device = x.device

    def step() -> None:  # engine.trainer.Trainer.step without the learning-rate schedule and the loss log
        amp = torch.autocast(device.type, dtype=AMP_DTYPES[t.amp_dtype]) if t.amp else contextlib.nullcontext()
        with amp:
            total, _ = distiller(x, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def flops_per_image(mode: str, cfg: Config, crop: int) -> float:
    """FLOPs of one step divided by the batch (2: BatchNorm needs more than one sample), on meta tensors.
    Neither the dtype nor channels_last nor compile changes the count, so none is applied."""
    with torch.device("meta"):
        cfg, student, teacher = build_networks(mode, cfg)
        x = torch.empty(2, 3, crop, crop)
        y = torch.zeros(2, crop, crop, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        if mode == "eval":
            window_probs(student.eval(), x, flip=False, batch=2)
        else:
            total, _ = Distiller.from_config(student, teacher, cfg).train()(x, y)
            total.backward()
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


def bench_models(args: argparse.Namespace, info: DistInfo, peak: Callable[[torch.dtype], float]) -> list[dict]:
    """One row per mode; ``peak(dtype)`` is the device's peak TFLOP/s in the dtype the step computes in."""
    device, rows = info.device, []
    cfg = bench_config(args)
    for mode in [m for m in args.modes if m != "loader"]:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step = make_step(mode, cfg, info, args.batch, args.crop)
        seconds = time_steps(step, device, args.warmup, args.steps)
        flops = flops_per_image(mode, cfg, args.crop)
        tflops = flops * args.batch / seconds / 1e12
        dtype = AMP_DTYPES[cfg.train.amp_dtype] if cfg.train.amp and mode != "eval" else torch.float32
        rows.append({
            "mode": mode, "dtype": str(dtype).replace("torch.", ""), "images_per_s": args.batch / seconds,
            "step_ms": seconds * 1e3,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "gflop_per_image": flops / 1e9, "tflops": tflops, "fraction_of_peak": tflops / peak(dtype),
        })
        del step
    return rows


def bench_loader(args: argparse.Namespace, info: DistInfo) -> list[dict]:
    """Images/s of the training data pipeline (``engine.setup.build_data``: augmentation included, ``--batch``
    images a batch) for each worker count."""
    rows = []
    for workers in args.workers:
        loader, sampler = build_data(bench_config(args, f"train.workers={workers}"), info)
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
    peaks = ", ".join(f"{d} {p:.2f}" for d, p in result["peak_tflops"].items())
    lines = [] if "loader_vs_semseg" not in result else [format_loader(result["loader_vs_semseg"]), ""]
    if not result["models"]:
        return "\n".join(lines).strip()
    lines += [f"device: {result['env']['device']}  torch {result['env']['torch']}  crop {result['crop']}  "
             f"batch {result['batch']}  amp {result['amp']}  optimizer {result['optimizer']}  "
             f"channels_last {result['channels_last']}  compile {result['compile']}  "
             f"peak TFLOP/s {peaks} ({result['peak_source']})",
             "| mode | dtype | images/s | step ms | peak mem GiB | GFLOP/image | TFLOP/s | of peak |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        lines.append(f"| {r['mode']} | {r['dtype']} | {r['images_per_s']:.2f} | {r['step_ms']:.1f} | {mem} "
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
    p.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES[:-1]),
                   help=f"comma-separated, out of {', '.join(MODES)} (default: all but loader)")
    p.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[0, 2, 4, 8])
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7, help="loader mode: interleaved repeats per pipeline")
    p.add_argument("--images", type=int, default=200, help="loader mode: generated VOC-sized images")
    p.add_argument("--levers", action="store_true", help="loader mode: one row per loader change, one at a time")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak; default: measured by a matmul")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_intermixed_args(argv)  # overrides may sit between the options


def run(args: argparse.Namespace) -> dict:
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        raise SegKDError(f"--modes: unknown mode {bad[0]!r}; choose from {', '.join(MODES)}")
    if args.repeats < 1 or args.images < 1 or args.loader_batches < 1:
        raise SegKDError("--repeats, --images and --loader-batches: need at least 1")
    if args.crop < 32 or args.batch < 2:
        raise SegKDError(f"--crop {args.crop} / --batch {args.batch}: need crop >= 32 and batch >= 2 (BatchNorm)")
    cfg = bench_config(args)
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=pick_device(cfg.train.device, 0))
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train.py: fixed crop size, autotune once
    peaks: dict[torch.dtype, float] = {}

    def peak(dtype: torch.dtype) -> float:
        if dtype not in peaks:
            peaks[dtype] = args.peak_tflops or measure_peak_tflops(info.device, dtype)
        return peaks[dtype]

    models = bench_models(args, info, peak)
    loader = "loader" in args.modes
    extra = {"loader_vs_semseg": run_loader_benchmark(cfg, args.workers, args.loader_batches, args.repeats,
                                                      args.levers, args.images)} if loader else {}
    return {**extra, "env": environment(info.device), "crop": args.crop, "batch": args.batch,
            "amp": cfg.train.amp and cfg.train.amp_dtype, "optimizer": cfg.train.optimizer,
            "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
            "peak_tflops": {str(d).replace("torch.", ""): p for d, p in peaks.items()},
            "peak_source": "given" if args.peak_tflops else "measured: matmul/conv in each row's dtype",
            "models": models,
            "loader": bench_loader(args, info) if cfg.data.root is not None and args.workers and not loader else [],
            "command": " ".join(sys.argv)}


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
