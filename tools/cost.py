"""Training cost of the instrument's rows: seconds per iteration, FLOPs, peak memory and extra trainable parameters.

    python -m tools.cost --rows all --out docs/results/cost/   # every instrument row: the file to commit, named
                                                               # after this machine kind (tools.equal_cost.cost_path)
    python -m tools.cost --config config/synthetic_cpu/pspnet18_kd.yaml --config config/voc2012/pspnet18_kd.yaml
    python -m tools.cost --rows "pspnet18_baseline pspnet18_kd" --iters 3 --warmup 1 --rounds 1     # a smoke run

A row is a config (``--config``, repeatable; or ``--rows`` names under ``--config-dir``, ``all`` for
tools.equal_cost.INSTRUMENT_ROWS) and its training step is tools/benchmark.py's (``training_step``: the trainer's
step without its schedule and log, the optimizer with the methods' connectors) on random tensors at the config's
``train.batch_size`` and ``train.crop_size``, randomly initialised networks (weights do not change dense kernels'
time): a distilled row's student, its frozen teacher (a PSPNet of ``teacher.layers``) and its methods; a mutual
row's peers (engine.setup.build_mutual); SSLD's batch with its unlabelled images' labels. The teacher's forward
is part of every distilled row's step: no teacher cache (docs/TABLES.md, "Equal-cost comparisons", says how the
instrument's cache counts). The data loader is not timed: it runs in its own worker process in training, the same
for every row but SSLD's doubled batch.

For each row: the median seconds of one step and its interquartile range, over ``--rounds`` × ``--iters`` steps, each
round a fresh process that runs ``--warmup`` untimed steps first; the rows are measured in turn within a round, so a
slow spell of the machine falls on every row; ``--before`` / ``--after`` run around each (tools/speed.py's hooks, e.g.
pausing other jobs), and rows whose round medians lie more than 5% apart are named under the table. FLOPs of one step
(forward and backward, teacher forward included; ``torch.utils.flop_counter.FlopCounterMode``, which counts matrix
products and convolutions: shapes only, so deterministic) and of the teacher's forward alone; the peak memory (CPU:
the peak resident set of the row's process, ``resource.getrusage`` ``ru_maxrss``, minus its resident set after imports
and before the networks are built; CUDA: ``torch.cuda.max_memory_allocated``); the trainable parameters beyond the
evaluated student (the methods' connectors, AFD's attention, a mutual row's other peers). The file names the machine
(util/machine.py), the commit and the settings; tools/equal_cost.py reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from engine.rundir import git_commit
from engine.setup import build_mutual, prepare_methods, prepare_models
from model.distiller import Distiller
from tools.benchmark import build_networks, sync, training_step
from tools.equal_cost import CONFIG_DIR, INSTRUMENT_ROWS, REPO, SCHEMA, check_cost, cost_path, this_machine
from tools.speed import hooks
from util.config import UNLABELED_LABEL, Config, load_config, unlabeled_per_process
from util.distributed import DistInfo, pick_device
from util.errors import SegKDError
from util.machine import machine, machine_label

MEMORY_CPU = ("peak resident set of the row's own process (resource.getrusage ru_maxrss) minus its resident set "
              "after imports, before the networks are built")
MEMORY_CUDA = "torch.cuda.max_memory_allocated over the row's steps"
UNSTEADY = 0.05  # round medians further apart than this: a warning under the table


def row_config(path: str, overrides: list[str]) -> Config:
    """The row's config as it trains, with ImageNet weights off (random weights cost the same per step)."""
    return load_config(path, [*overrides, "model.pretrained=false"])


def build_trainee(cfg: Config, info: DistInfo) -> nn.Module:
    """What training steps for this config, randomly initialised and prepared as train.py prepares it: the peers
    of a mutual row, else the student (and its frozen teacher and methods, when distilled) in a Distiller."""
    if cfg.mutual.peers:
        return build_mutual(cfg, info).train()
    mode = "distill" if cfg.teacher.checkpoint else "student_train"
    cfg, student, teacher = build_networks(mode, cfg)
    student, teacher = prepare_models(student, teacher, cfg, info)
    distiller = Distiller.from_config(student, teacher, cfg).train()
    prepare_methods(distiller.methods, cfg, info)
    return distiller


def random_batch(cfg: Config, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images B×3×C×C and labels B×C×C of the config's batch and crop, from a seeded generator; with
    ``data.unlabeled_list`` the last images of the batch are unlabelled, as the loader marks them."""
    t = cfg.train
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t.batch_size, 3, t.crop_size, t.crop_size, generator=g)
    y = torch.randint(0, cfg.data.classes, (t.batch_size, t.crop_size, t.crop_size), generator=g)
    if cfg.data.unlabeled_list is not None:
        y[t.batch_size - unlabeled_per_process(cfg.data.unlabeled_ratio, t.batch_size):] = UNLABELED_LABEL
    return x.to(device), y.to(device)


def step_flops(trainee: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one forward and backward of ``trainee`` (``trainee(x, y) -> (total, terms)``) on this batch, a
    teacher's forward inside it included (FlopCounterMode: a multiply-add is 2)."""
    counter = FlopCounterMode(display=False)
    with counter:
        total, _ = trainee(x, y)
        total.backward()
    trainee.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def teacher_flops(trainee: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of the teacher's forward alone (with the tensors its methods ask for); 0 without a teacher."""
    if getattr(trainee, "teacher", None) is None:
        return 0
    counter = FlopCounterMode(display=False)
    with counter:
        trainee.teacher_logits(x)
    return int(counter.get_total_flops())


def extra_parameters(trainee: nn.Module) -> dict[str, int]:
    """Trainable parameters beyond the evaluated student, by name: each method's (connectors) or each other peer's."""
    if hasattr(trainee, "peers"):
        return {f"peer{i}": sum(p.numel() for p in peer.parameters()) for i, peer in enumerate(trainee.peers) if i}
    return {name: sum(p.numel() for p in m.parameters() if p.requires_grad) for name, m in trainee.methods.items()}


def rss_mib() -> float:
    """The process's peak resident set so far in MiB (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def time_each(step: Callable[[], None], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds of each of ``iters`` steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def measure_row(path: str, overrides: list[str], warmup: int, iters: int) -> dict[str, Any]:
    """One round of one row, in this process: its step times, FLOPs, memory and parameters."""
    cfg = row_config(path, overrides)
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=pick_device(cfg.train.device, 0))
    torch.manual_seed(0)
    x, y = random_batch(cfg, info.device)
    before = rss_mib()
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    trainee = build_trainee(cfg, info)
    flops, t_flops = step_flops(trainee, x, y), teacher_flops(trainee, x)
    times = time_each(training_step(trainee, cfg, x, y), info.device, warmup, iters)
    memory = (torch.cuda.max_memory_allocated(info.device) / 2**20 if info.device.type == "cuda"
              else rss_mib() - before)
    student = trainee.peers[0] if hasattr(trainee, "peers") else trainee.student
    extra = extra_parameters(trainee)
    return {"times": times, "flops": flops, "teacher_forward_flops": t_flops, "peak_memory_mib": memory,
            "extra_params": sum(extra.values()), "extra_params_by": extra,
            "student_params": sum(p.numel() for p in student.parameters()),
            "batch_size": cfg.train.batch_size, "crop_size": cfg.train.crop_size,
            "device": info.device.type, "threads": torch.get_num_threads()}


def seconds_summary(times: list[float], rounds: list[list[float]]) -> dict[str, Any]:
    """Median and quartiles (numpy's linear interpolation, statistics.quantiles 'inclusive') of the pooled step
    times, and each round's median (how stable the measurement was)."""
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (times[0],) * 3
    return {"median": median, "q1": q1, "q3": q3, "iqr": q3 - q1, "n": len(times),
            "round_medians": [statistics.median(r) for r in rounds]}


def round_spread(seconds: dict[str, Any]) -> float:
    """How far apart a row's round medians are: largest / smallest - 1 (0 with one round)."""
    medians = seconds["round_medians"]
    return max(medians) / min(medians) - 1.0


def measure_in_process(path: str, overrides: list[str], warmup: int, iters: int) -> dict[str, Any]:
    """:func:`measure_row` in a fresh Python process (its own peak memory, allocator and threads)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        cmd = [sys.executable, "-m", "tools.cost", "--config", os.path.abspath(path), "--one", out,
               "--warmup", str(warmup), "--iters", str(iters), *overrides]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise SegKDError(f"{path}: measuring failed (exit {r.returncode}): {last}")
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def combine(path: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the cost file from its rounds; FLOPs and parameters must agree (they depend on shapes only)."""
    first = rounds[0]
    for key in ("flops", "teacher_forward_flops", "extra_params", "student_params"):
        if any(r[key] != first[key] for r in rounds):
            raise SegKDError(f"{path}: {key} differs between rounds ({[r[key] for r in rounds]}): not deterministic")
    times = [t for r in rounds for t in r["times"]]
    return {"config": os.path.relpath(os.path.abspath(path), REPO).replace(os.sep, "/"),
            "seconds": seconds_summary(times, [r["times"] for r in rounds]),
            "peak_memory_mib": max(r["peak_memory_mib"] for r in rounds),
            **{k: first[k] for k in ("flops", "teacher_forward_flops", "extra_params", "extra_params_by",
                                     "student_params", "batch_size", "crop_size")}}


def row_paths(args: argparse.Namespace) -> dict[str, str]:
    """{row name: config path} from ``--config`` and ``--rows``, in order."""
    paths = {os.path.splitext(os.path.basename(c))[0]: c for c in args.config or []}
    names = list(INSTRUMENT_ROWS) if args.rows == "all" else (args.rows or "").split()
    for name in names:
        paths[name] = os.path.join(args.config_dir, name + ".yaml")
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise SegKDError(f"{missing[0]}: no such config")
    if not paths:
        raise SegKDError("no row to measure: give --config CFG or --rows (all, or names under --config-dir)")
    return paths


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    paths = row_paths(args)
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    start = time.time()
    for k in range(args.rounds):
        for name, path in paths.items():
            with hooks(args):  # --before / --after: e.g. other jobs paused while the row is measured
                measured[name].append(measure_in_process(path, args.overrides, args.warmup, args.iters))
            med = statistics.median(measured[name][-1]["times"])
            log(f"round {k + 1}/{args.rounds} {name}: {med:.3f} s per iteration ({time.time() - start:.0f} s so far)")
    device = measured[next(iter(paths))][0]["device"]
    meta = machine(torch.device("cuda" if device == "cuda" else "cpu"))
    cost = {"schema": SCHEMA, "machine": meta, "machine_label": machine_label(meta), "commit": git_commit(),
            "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python -m tools.cost", *sys.argv[1:]]),
            "settings": {"warmup": args.warmup, "iters": args.iters, "rounds": args.rounds, "overrides": args.overrides,
                         "device": device, "threads": measured[next(iter(paths))][0]["threads"],
                         "torch": torch.__version__, "python": platform.python_version(),
                         "timing": "median and quartiles of single training steps on random tensors, warm-up "
                                   "excluded, rounds of fresh processes; data loading not timed",
                         "flops": "FlopCounterMode, one forward+backward step, the teacher's forward included",
                         "memory": MEMORY_CUDA if device == "cuda" else MEMORY_CPU,
                         "teacher_cache": "not used: every distilled row's step runs its teacher's forward"},
            "rows": {name: combine(path, measured[name]) for name, path in paths.items()}}
    return check_cost(cost, "the measured cost")


def format_rows(cost: dict[str, Any]) -> str:
    lines = [f"{cost['machine_label']}, commit {cost['commit']}, {cost['settings']['threads']} threads",
             "| row | s / iter | IQR | rounds apart | GFLOPs / iter | teacher GFLOPs | peak MiB | extra params |",
             "|---|---|---|---|---|---|---|---|"]
    unsteady = []
    for name, r in cost["rows"].items():
        s = r["seconds"]
        spread = round_spread(s)
        unsteady += [name] if spread > UNSTEADY else []
        lines.append(f"| {name} | {s['median']:.3f} | {s['iqr']:.3f} | {100 * spread:.1f}% | {r['flops'] / 1e9:.2f} "
                     f"| {r['teacher_forward_flops'] / 1e9:.2f} | {r['peak_memory_mib']:.0f} | {r['extra_params']:,} |")
    if unsteady:
        lines += ["", f"warning: the round medians of {', '.join(unsteady)} are more than {100 * UNSTEADY:.0f}% apart: "
                      "the machine was not quiet (or too few --iters); measure again before committing the file"]
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", help="a row's experiment YAML (repeatable); the row is its name")
    p.add_argument("--rows", default=None, help="'all' (every instrument row) or space-separated config names")
    p.add_argument("--config-dir", default=CONFIG_DIR, help="where --rows' configs are (config/synthetic_cpu)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every row")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first, in each round")
    p.add_argument("--iters", type=int, default=20, help="timed steps per row and round")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per row, the rows in turn")
    p.add_argument("--out", default=None, help="write the cost file here, or into this folder (ending in /) named "
                                               "after the machine kind; an existing file is not overwritten")
    p.add_argument("--before", default=None, help="shell command run right before each row's process (tools.speed's)")
    p.add_argument("--after", default=None, help="shell command run right after it (also when it fails)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one --config in-process
    return p.parse_intermixed_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = parse_args(argv)
        if args.warmup < 0 or args.iters < 1 or args.rounds < 1:
            raise SegKDError(f"--warmup {args.warmup} --iters {args.iters} --rounds {args.rounds}: need warmup >= 0, "
                             "iters >= 1, rounds >= 1")
        if args.one:
            with open(args.one, "w", encoding="utf-8") as f:
                json.dump(measure_row(args.config[0], args.overrides, args.warmup, args.iters), f)
            return 0
        if args.out and (args.out.endswith(("/", os.sep)) or os.path.isdir(args.out)):  # a folder: the machine's file
            first = row_config(next(iter(row_paths(args).values())), args.overrides)
            device = pick_device(first.train.device, 0).type
            args.out = os.path.join(args.out, os.path.basename(cost_path(this_machine(device))))
        if args.out and os.path.exists(args.out):
            raise SegKDError(f"{args.out}: already exists; remove it or choose another --out")
        cost = run(args, lambda line: print(line, file=sys.stderr, flush=True))
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_rows(cost))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(cost, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
