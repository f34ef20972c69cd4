"""Inference speed of the deployed networks: teacher (PSPNet-R50) and student (PSPNet-R18), eager / TorchScript /
ONNX Runtime, ms per image at batch 1, with params and GFLOPs and a student / teacher row.

    python -m tools.speed                                   # 512x512, 21 classes, median of 20 after 2 warm-ups
    python -m tools.speed --size 512 --repeats 30 --out speed.json
    python -m tools.speed --before '/bin/kill -STOP -- -PGID' --after '/bin/kill -CONT -- -PGID'  # others paused
    python -m tools.speed --models student --size 64 --repeats 2 --warmup 0   # smoke test (tests/test_speed_table.py)

Each network is ``engine.export.InferenceNetwork`` (RGB 0..255 in, normalisation, no aux head, logits zoomed to
the input), randomly initialised: weights do not change the time of these dense float32 kernels, and no
checkpoint is needed. TorchScript and ONNX are the files ``tools.export`` writes (``engine.export.export``, into
a temporary folder), each checked against eager before it is timed; eager and TorchScript run under
``torch.inference_mode``, ONNX Runtime on its CPU provider with ``torch.get_num_threads()`` intra-op threads (the
machine's threads unless OMP_NUM_THREADS says otherwise). A time is the median of ``--repeats`` single-image
calls after ``--warmup`` untimed ones, on the same fixed input; ``--before`` and ``--after`` are shell commands
run right before and after each runtime's timed calls (on a shared machine: pause the other jobs; they run in
``/bin/sh``, whose ``kill`` builtin may not take ``--``, hence ``/bin/kill``). bf16 (eager
under CPU autocast) is measured only when the CPU has bf16 units (``avx512_bf16`` or ``amx_bf16`` in its flags);
otherwise the column says why not.
GFLOPs are ``engine.flops.gflops`` at the input size (the network without its aux head), params
``engine.flops.count_params``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

import torch

from engine.export import InferenceNetwork, export, load_exported, max_differences, tolerance
from engine.flops import count_params, gflops
from model.pspnet import build_pspnet
from util.errors import SegKDError
from util.machine import cpu_flags, cpu_name

NETWORKS = {"teacher": 50, "student": 18}  # name -> ResNet depth (PSPNet, torchvision stem, semseg dilation)
RUNTIMES = ("eager", "torchscript", "onnxruntime", "bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def bf16_units(flags: set[str]) -> Optional[str]:
    """None when the CPU has native bf16 (``avx512_bf16`` / ``amx_bf16``), else why bf16 is not measured."""
    if any(f in flags for f in BF16_FLAGS):
        return None
    return f"not measured: no bf16 units (no {' or '.join(BF16_FLAGS)} in the CPU flags)"


def median_ms(call: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median wall time of one ``call()`` in ms, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def prepare(name: str, classes: int, size: int, folder: str) -> dict:
    """The network ``name`` and its runtimes: {runtime: callable on a 1x3xSxS tensor}, each export checked."""
    torch.manual_seed(0)
    network = InferenceNetwork(build_pspnet(NETWORKS[name], classes)).eval()
    calls = {"eager": network}
    for fmt, runtime in (("torchscript", "torchscript"), ("onnx", "onnxruntime")):
        path = os.path.join(folder, f"{name}.{fmt}")
        export(network, fmt, path, (size, size))
        calls[runtime] = load_exported(path, fmt, threads=torch.get_num_threads())
        (diff, largest), = max_differences(network, calls[runtime], [(size, size)])
        if diff > tolerance(largest):
            raise SegKDError(f"{name} {fmt}: differs from eager by {diff:.2e} (tolerance {tolerance(largest):.2e})")
    return {"network": network, "calls": calls,
            "params": count_params(network.segmentor), "gflops": gflops(NETWORKS[name], classes, size)}


def time_network(prepared: dict, size: int, warmup: int, repeats: int, bf16: bool,
                 quiet: Callable[[], contextlib.AbstractContextManager]) -> dict[str, Optional[float]]:
    """{runtime: median ms}; each runtime's calls inside ``quiet()`` (the ``--before`` / ``--after`` hooks)."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    calls = dict(prepared["calls"])
    if bf16:
        calls["bf16"] = lambda x: _bf16(prepared["network"], x)
    row: dict[str, Optional[float]] = {"bf16": None}
    with torch.inference_mode():
        for runtime, call in calls.items():
            with quiet():
                row[runtime] = median_ms(lambda call=call: call(x), warmup, repeats)
            log(f"  {runtime}: {row[runtime]:.0f} ms")
    return row


def _bf16(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return network(x)


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def hooks(args: argparse.Namespace):
    """``--before``, then the timed calls, then ``--after`` (also when they fail): shell commands around each
    runtime's timing, e.g. pausing other jobs on a shared machine; a failing hook is an error."""
    _hook(args.before, "before")
    try:
        yield
    finally:
        _hook(args.after, "after")


def _hook(command: Optional[str], what: str) -> None:
    if command and subprocess.run(command, shell=True).returncode != 0:
        raise SegKDError(f"--{what} {command!r} failed")


def format_table(result: dict) -> str:
    """Markdown: one row per network and the student / teacher ratio when both were measured."""
    bf16_note = result["bf16_note"]
    lines = ["| network | params (M) | GFLOPs | eager fp32 ms | TorchScript ms | ONNX Runtime ms | bf16 autocast ms |",
             "|---|---|---|---|---|---|---|"]
    rows = result["rows"]

    def cells(values: dict, fmt: str) -> str:
        out = [fmt.format(values[r]) if values.get(r) is not None else "-" for r in RUNTIMES[:3]]
        out.append(fmt.format(values["bf16"]) if values.get("bf16") is not None else
                   ("not measured" if bf16_note else "-"))
        return " | ".join(out)

    for name, r in rows.items():
        label = f"{name} (PSPNet-R{NETWORKS[name]})"
        lines.append(f"| {label} | {r['params'] / 1e6:.2f} | {r['gflops']:.1f} | {cells(r['ms'], '{:.0f}')} |")
    if {"teacher", "student"} <= rows.keys():
        s, t = rows["student"], rows["teacher"]
        ratio = {k: s["ms"][k] / t["ms"][k] for k in RUNTIMES if s["ms"].get(k) and t["ms"].get(k)}
        lines.append(f"| student / teacher | {s['params'] / t['params']:.2f} | {s['gflops'] / t['gflops']:.2f} | "
                     f"{cells(ratio, '{:.2f}')} |")
    if bf16_note:
        lines += ["", f"bf16: {bf16_note}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    unknown = [m for m in args.models if m not in NETWORKS]
    if unknown:
        raise SegKDError(f"--models: unknown network {unknown[0]!r}; choose from {', '.join(NETWORKS)}")
    if args.size < 32 or args.repeats < 1 or args.warmup < 0:
        raise SegKDError(f"--size {args.size} --repeats {args.repeats} --warmup {args.warmup}: need size >= 32, "
                         "repeats >= 1, warmup >= 0")
    note = bf16_units(cpu_flags())
    rows, timed_s = {}, 0.0
    with tempfile.TemporaryDirectory() as folder:
        prepared = {}
        for name in args.models:
            start = time.time()
            prepared[name] = prepare(name, args.classes, args.size, folder)
            log(f"{name}: built and exported in {time.time() - start:.0f} s, exports checked against eager")
        for name, p in prepared.items():
            log(f"timing {name} ({args.warmup} warm-up + {args.repeats} calls per runtime)")
            start = time.time()
            ms = time_network(p, args.size, args.warmup, args.repeats, note is None, lambda: hooks(args))
            timed_s += time.time() - start
            rows[name] = {"params": p["params"], "gflops": p["gflops"], "ms": ms}
    import onnxruntime

    return {"rows": rows, "bf16_note": note, "size": args.size, "classes": args.classes, "batch": 1,
            "warmup": args.warmup, "repeats": args.repeats, "timed_seconds": timed_s,
            "env": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
                    "date": time.strftime("%Y-%m-%d")},
            "command": " ".join(["python -m tools.speed", *sys.argv[1:]])}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="square input side")
    p.add_argument("--classes", type=int, default=21, help="output classes (VOC: 21)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per runtime; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    p.add_argument("--models", type=lambda s: s.split(","), default=list(NETWORKS), help="teacher,student")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--before", default=None, help="shell command run right before each runtime is timed")
    p.add_argument("--after", default=None, help="shell command run right after (also when timing fails)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = parse_args(argv)
        if args.out and os.path.exists(args.out):
            raise SegKDError(f"{args.out}: already exists; remove it or choose another --out")
        result = run(args)
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = result["env"]
    print(f"{env['cpu']}, {env['threads']} threads, torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
          f"{result['size']}x{result['size']}, batch 1, {result['classes']} classes, median of {result['repeats']} "
          f"after {result['warmup']} warm-up ({result['timed_seconds']:.0f} s timed), random-init weights")
    print(format_table(result))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
