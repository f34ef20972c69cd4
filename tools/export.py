"""Export a segkd checkpoint's inference network to TorchScript or ONNX, checked against eager on export.

    python -m tools.export --checkpoint runs/r18/model/final.pth --format torchscript deploy/r18.pt
    python -m tools.export --checkpoint runs/r18/model/final.pth --format onnx deploy/r18.onnx --size 512 512
    python -m tools.export --checkpoint runs/r18/model/final.pth --format torchscript --trainable deploy/r18_train.pt

What is exported (``engine.export.InferenceNetwork``): input ``image``, float32 N×3×H×W RGB on the 0..255 scale,
NOT normalised (ImageNet's mean and std are inside the graph); output ``logits``, N×K×H×W at the input's size
(zoomed with the network's ``align_corners``), no aux head, no softmax; batch, height and width dynamic.
``--size`` is the example the graph is traced on (default 512 512).

``--trainable`` (TorchScript only) exports the student ``deploy/cpp/segkd_distill`` trains instead
(``engine.export.TrainableStudent``): the same input; outputs the tuple (main logits, aux logits), each N×K×H×W at
the input's size; every parameter requires grad; BatchNorm in eval mode (running statistics frozen, weight and bias
trainable) and dropout off, baked into the trace; the file carries the extra file ``segkd_trainable.json`` (what it
contains, in words), which segkd_distill requires of its student. The check compares both outputs.

The check runs on every export: the written file (TorchScript through ``torch.jit.load``, ONNX through ONNX
Runtime's CPU provider) against the eager network on a fixed seeded input at ``--size`` and at a second size
whose sides are not multiples of 8; it prints the max abs difference of each and fails above
``1e-4 + 1e-5 * max |eager logit|`` (``engine.export.tolerance``). ONNX needs onnx (the exporter) and onnxruntime
(the check), development dependencies (requirements-dev.txt); TorchScript needs neither.

OUT is written only when the check passes (through ``OUT.tmp``) and never replaces a file unless ``--overwrite``.
Exit status: 0 written; 1 the check failed (OUT not written); 2 bad input (checkpoint, arguments, OUT exists).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional

import torch

from engine.export import (
    FORMATS,
    InferenceNetwork,
    JoinedLogits,
    TrainableStudent,
    check_sizes,
    export,
    export_trainable,
    load_exported,
    load_trainable,
    max_differences,
    tolerance,
)
from model.build import describe_checkpoint, model_from_checkpoint
from util.errors import SegKDError


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a segkd checkpoint (train.py's model/final.pth)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("out", help="the file to write (.pt for TorchScript, .onnx)")
    p.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                   help="height and width of the example input the graph is traced on and checked at")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--trainable", action="store_true",
                   help="export the trainable student of deploy/cpp/segkd_distill (main and aux logits, parameters "
                        "requiring grad, BatchNorm statistics frozen); TorchScript only")
    return p.parse_args(argv)


def need_onnx() -> None:
    """onnx (torch.onnx.export writes through it) and onnxruntime (the check runs the file) are development
    dependencies: without them, one line before anything is exported."""
    for module in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise SegKDError(f"{module} is not installed: the ONNX export needs onnx and onnxruntime "
                             "(pip install onnx onnxruntime, or -r requirements-dev.txt)") from None


def run(args: argparse.Namespace) -> int:
    if min(args.size) < 32:
        raise SegKDError(f"--size {args.size[0]} {args.size[1]}: both sides must be at least 32")
    if os.path.exists(args.out) and not args.overwrite:
        raise SegKDError(f"{args.out}: already exists; remove it or pass --overwrite (nothing was written)")
    if args.trainable and args.format != "torchscript":
        raise SegKDError(f"--trainable --format {args.format}: the trainable student is TorchScript only")
    if args.format == "onnx":
        need_onnx()
    segmentor, ckpt = model_from_checkpoint(args.checkpoint, None)
    if args.trainable and segmentor.aux_head is None:
        raise SegKDError(f"{args.checkpoint}: --trainable exports main and aux logits, and "
                         f"{describe_checkpoint(ckpt)} has no aux head (CIRKD's MobileNetV3); export it without "
                         "--trainable")
    size = tuple(args.size)
    tmp = args.out + ".tmp"
    try:
        if args.trainable:
            network, exported = trainable_exported(segmentor, tmp, size, ckpt["classes"])
        else:
            network = InferenceNetwork(segmentor).eval()
            export(network, args.format, tmp, size)
            exported = load_exported(tmp, args.format, threads=torch.get_num_threads())
        ok = True
        for (h, w), (diff, largest) in zip(check_sizes(size), max_differences(network, exported, check_sizes(size))):
            limit = tolerance(largest)
            ok &= diff <= limit
            print(f"check {h}x{w}: max abs difference {diff:.2e} from eager ({'ok' if diff <= limit else 'FAILED'}, "
                  f"tolerance {limit:.2e} = 1e-4 + 1e-5 x max |logit| {largest:.3g})")
        if not ok:
            print(f"error: {args.out}: the exported model differs from eager; not written", file=sys.stderr)
            return 1
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    outputs = (f"outputs (main, aux) Nx{ckpt['classes']}xHxW logits, trainable, BatchNorm statistics frozen"
               if args.trainable else f"output Nx{ckpt['classes']}xHxW logits")
    print(f"wrote {args.out}: {args.format}, {describe_checkpoint(ckpt)}; input float32 Nx3xHxW RGB 0..255 "
          f"(normalised inside), {outputs}")
    return 0


def trainable_exported(segmentor: torch.nn.Module, tmp: str, size: tuple[int, int], classes: int):
    """Write the trainable student to ``tmp``; (eager, exported) as one-tensor callables for the check (main and
    aux logits concatenated)."""
    student = TrainableStudent(segmentor)
    export_trainable(student, tmp, size, classes)
    loaded = JoinedLogits(load_trainable(tmp))
    return JoinedLogits(student), lambda x: loaded(x).detach()


def main(argv: Optional[list[str]] = None) -> int:
    try:
        return run(parse_args(argv))
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
