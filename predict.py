"""Segment images without labels with a trained checkpoint and test.py's evaluation protocol.

    python predict.py --config config/synthetic/pspnet18_kd.yaml --out preds photo.jpg    # output.dir/model/final.pth
    python predict.py --config config/voc2012/pspnet18_kd.yaml --out preds photos test.checkpoint=r18/final.pth
    python predict.py --config ... --out preds photos/ test.scales=[0.75,1.0,1.25] test.flip=true  # multi-scale + flip

The checkpoint is ``test.checkpoint`` (default ``output.dir/model/final.pth``), rebuilt as test.py rebuilds it; each
image goes through ``engine.inference.predict`` with ``test.scales``, ``test.flip``, ``test.base_size``,
``test.crop_size``, ``test.stride_rate``, ``test.mode`` and ``test.resize``, so a prediction is the one test.py
would score. An argument ``key=value`` with a dotted key is a config override, any other is an input: an image
file, or a folder whose files with an image extension (:data:`IMAGE_EXTENSIONS`, not recursive) are all
predicted, with a progress bar.

For each input ``<stem>.<ext>`` it writes into ``--out``: ``<stem>.png``, the class indices as an 8-bit grey PNG
(test.py's ``gray/``), and ``<stem>_overlay.png``, the image blended with the colour of each pixel's class
(:data:`OVERLAY_ALPHA` of the colour, RGB; the ``data.dataset``'s palette, VOC's without one). Nothing is
overwritten unless ``--overwrite``: when ``--out`` already holds a file this run would write, or two inputs would
write the same file, it stops before predicting anything; an output that would replace one of the inputs is refused
even with ``--overwrite``.

An image that cannot be read or predicted is one line on stderr naming it, and the others still run. Exit status:
0 every image written; 1 some images failed (the others are written); 2 bad input before any image was predicted
(config, checkpoint, arguments, an output that exists).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Optional

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data.dataset import read_image
from data.datasets import check_data_keys, palette_of
from data.palette import voc_palette
from engine.inference import predict
from model.build import model_from_checkpoint
from util.config import Config, load_config
from util.distributed import pick_device
from util.errors import SegKDError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
OVERLAY_ALPHA = 0.5  # weight of the class colour in the overlay; the image has 1 - alpha
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")  # section.key=value


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="experiment YAML (over config/defaults.yaml)")
    p.add_argument("--out", required=True, help="folder for <stem>.png and <stem>_overlay.png (created)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs of the same names")
    p.add_argument("args", nargs="+", metavar="IMAGE_OR_FOLDER", help="inputs, and key=value config overrides")
    args = p.parse_intermixed_args(argv)
    args.overrides = [a for a in args.args if _OVERRIDE.match(a)]
    args.inputs = [a for a in args.args if not _OVERRIDE.match(a)]
    if not args.inputs:
        p.error("no IMAGE_OR_FOLDER given")
    return args


def list_inputs(paths: list[str]) -> list[str]:
    """The image files of ``paths``: a file as given (whatever its extension), a folder's files with an image
    extension in name order. The files of a folder that are skipped are said on stderr."""
    images = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(os.listdir(path))
            files = [n for n in names if os.path.isfile(os.path.join(path, n))]
            chosen = [n for n in files if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
            skipped = [n for n in files if n not in chosen]
            if skipped:
                print(f"note: {path}: skipped {len(skipped)} file(s) without an image extension: "
                      f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", file=sys.stderr)
            images += [os.path.join(path, n) for n in chosen]
        elif os.path.isfile(path):
            images.append(path)
        else:
            raise SegKDError(f"{path}: no such image file or folder")
    if not images:
        raise SegKDError(f"{', '.join(paths)}: no image files")
    return images


def output_paths(images: list[str], out_dir: str, overwrite: bool) -> list[tuple[str, str]]:
    """(class-index PNG, overlay PNG) for each image, refused before anything is predicted when two images would
    write the same file, when an output would replace an input, or when one exists and not ``overwrite``."""
    outputs = []
    writer: dict[str, str] = {}
    inputs = {os.path.realpath(p) for p in images}
    for image in images:
        stem = os.path.splitext(os.path.basename(image))[0]
        pair = (os.path.join(out_dir, stem + ".png"), os.path.join(out_dir, stem + "_overlay.png"))
        for path in pair:
            key = os.path.realpath(path)
            if key in writer:
                raise SegKDError(f"{writer[key]} and {image} would both write {path}; predict them into separate "
                                 "--out folders (nothing was written)")
            if key in inputs:
                raise SegKDError(f"{path}: would replace an input image; choose another --out (nothing was written)")
            if os.path.exists(path) and not overwrite:
                raise SegKDError(f"{path}: already exists; remove it, choose another --out or pass --overwrite "
                                 "(nothing was written)")
            writer[key] = image
        outputs.append(pair)
    return outputs


def overlay(image: np.ndarray, pred: np.ndarray, alpha: float = OVERLAY_ALPHA,
            palette: Optional[list[int]] = None) -> np.ndarray:
    """H×W×3 uint8: ``(1 - alpha) * image + alpha * palette[pred]``, rounded (``palette``: 768 ints, VOC's by
    default)."""
    palette = np.asarray(voc_palette(256) if palette is None else palette, dtype=np.float32).reshape(256, 3)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * palette[pred]
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def write_png(path: str, write) -> None:
    """``write(tmp)`` then rename: an interrupted run leaves no half-written PNG under an output's name."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp.png")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def predict_one(model: torch.nn.Module, cfg: Config, device: torch.device, image_path: str,
                outputs: tuple[str, str]) -> None:
    image = read_image(image_path)
    t = cfg.test
    pred = predict(model, image, cfg.data.classes, t.base_size, t.crop_size, t.scales, t.flip, t.stride_rate,
                   device, t.mode, t.resize).astype(np.uint8)
    gray_path, overlay_path = outputs
    write_png(gray_path, lambda p: _imwrite(p, pred))
    blend = overlay(image, pred, palette=palette_of(cfg.data))
    write_png(overlay_path, lambda p: Image.fromarray(blend).save(p, format="PNG"))


def _imwrite(path: str, array: np.ndarray) -> None:
    if not cv2.imwrite(path, array):
        raise SegKDError(f"{path}: cannot write")


def load_model(cfg: Config, device: torch.device) -> torch.nn.Module:
    """``test.checkpoint`` (default ``output.dir/model/final.pth``), rebuilt and checked against ``data.classes``."""
    ckpt = cfg.test.checkpoint
    if ckpt is None:
        if cfg.output.dir is None:
            raise SegKDError("neither test.checkpoint nor output.dir is set: no checkpoint to predict with")
        ckpt = os.path.join(cfg.output.dir, "model", "final.pth")
    if cfg.data.classes > 256:
        raise SegKDError(f"data.classes={cfg.data.classes}: the class-index PNG holds at most 256 classes")
    model, _ = model_from_checkpoint(ckpt, cfg.data.classes)
    return model.to(device).eval()


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    check_data_keys(cfg.data)  # a data.dataset contradicting data.* stops here, not once per image
    images = list_inputs(args.inputs)
    outputs = output_paths(images, args.out, args.overwrite)
    device = pick_device(cfg.train.device, 0)
    model = load_model(cfg, device)
    os.makedirs(args.out, exist_ok=True)
    failed = []
    with torch.inference_mode():
        for image_path, pair in zip(tqdm(images, desc="predict", disable=len(images) < 2), outputs):
            error = try_predict(model, cfg, device, image_path, pair)
            if error:
                failed.append(image_path)
                tqdm.write(f"error: {error}", file=sys.stderr)
    done = len(images) - len(failed)
    print(f"wrote {done} of {len(images)} image(s) to {args.out}" + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0


def try_predict(model: torch.nn.Module, cfg: Config, device: torch.device, image_path: str,
                outputs: tuple[str, str]) -> Optional[str]:
    """:func:`predict_one`; None, or the one line saying why this image failed (the others still run)."""
    try:
        predict_one(model, cfg, device, image_path, outputs)
    except SegKDError as e:  # read_image names the file
        return str(e)
    except (RuntimeError, ValueError, cv2.error) as e:  # e.g. an image too small for the network
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return f"{image_path}: cannot predict ({type(e).__name__}: {first})"
    return None


def main(argv: Optional[list[str]] = None) -> int:
    try:
        return run(parse_args(sys.argv[1:] if argv is None else argv))
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
