"""The training loader against hszhao/semseg's, side by side: ``python -m tools.benchmark --modes loader``.

    python -m tools.benchmark --modes loader --config config/voc2012/pspnet50_teacher.yaml \\
        --workers 0,1,2 --loader-batches 10 --repeats 7 --levers --out loader.json

Both pipelines read the same generated VOC-sized data: ``--images`` JPEGs of 500x375 (one in four 375x500; a smooth
colour field, a few objects, noise; quality 90, 4:2:0 as PIL writes them) and 8-bit grey label PNGs with 255 bands
along the object boundaries, as VOC's SegmentationClassAug, in VOC's layout under a temporary folder.

semseg's pipeline is written here from its published code (hszhao/semseg ``util/dataset.py`` ``SemData``: cv2.imread
BGR -> RGB float32, the label by ``cv2.imread(..., IMREAD_GRAYSCALE)``; ``util/transform.py``; the training transform
and DataLoader of ``tool/train.py``: RandScale 0.5-2.0, RandRotate +-10 padded with the mean, GaussianBlur,
HorizontalFlip, Crop 'rand' padded with the mean, ToTensor, Normalize; shuffle, drop_last), never in the library.
segkd's is the library's, built by ``engine.setup.build_data`` from the config's ``data``/``train`` keys, and each
batch is finished as the trainer finishes it (``data.loader.batch_to_device``: int64 labels, a uint8 batch
normalised) on the device, which is this process on a CPU. With ``--levers`` the changes between segkd's earlier
loader and today's are measured one at a time, each row adding one (``LEVERS``).

Each measurement is one epoch (:func:`measure`): after the first batch (per worker: their start-up), samples per
CPU-second of the main process and its workers over ``--loader-batches`` batches (per core; with and without the
finishing step) and samples per wall-clock second. CPU time is what load from other jobs disturbs least. The main
process runs torch with one thread and OpenCV with none (semseg's train.py sets ``cv2.setNumThreads(0)``), for both.
Each repeat measures every pipeline at every worker count, in an order rotated per repeat (A, B, then B, A, ...), so
load from other jobs hits them alike; a table holds the medians, and the ratio to semseg is the median of the ratios
paired within a repeat.
"""

from __future__ import annotations

import functools
import os
import random
import statistics
import tempfile
import time
from typing import Callable, Optional

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from data.dataset import SegDataset, decode_pil, read_image, read_label, read_list
from data.loader import batch_to_device, build_train_loader, collate_crops
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_train_transform
from engine.setup import build_data
from util.config import Config
from util.distributed import DistInfo


# ---------------------------------------------------------------- generated VOC-sized data
def write_voc_like(root: str, images: int, seed: int = 0) -> list[str]:
    """``images`` JPEG/PNG pairs in VOC's layout under ``root``; their names."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationClassAug", "list"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    names = [f"2007_{i:06d}" for i in range(images)]
    for i, name in enumerate(names):
        h, w = (500, 375) if i % 4 == 3 else (375, 500)
        field = rng.uniform(0, 255, (h // 32 + 2, w // 32 + 2, 3)).astype(np.float32)
        image = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
        label = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(20, w // 2)), int(rng.integers(20, h // 2)))
            angle, cls = float(rng.uniform(0, 180)), int(rng.integers(1, 21))
            cv2.ellipse(label, centre, axes, angle, 0, 360, cls, -1)
            cv2.ellipse(image, centre, axes, angle, 0, 360, rng.uniform(0, 255, 3).tolist(), -1)
            cv2.ellipse(label, centre, axes, angle, 0, 360, 255, 5)  # VOC's void band along the boundary
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(root, "JPEGImages", name + ".jpg"), quality=90)
        Image.fromarray(label, mode="L").save(os.path.join(root, "SegmentationClassAug", name + ".png"))
    return names


def write_list(root: str, names: list[str], samples: int) -> str:
    """``list/train_<samples>.txt`` of ``samples`` lines, image ``k % len(names)`` on line k; its path under root."""
    rel = os.path.join("list", f"train_{samples}.txt")
    with open(os.path.join(root, rel), "w", encoding="utf-8") as f:
        for k in range(samples):
            f.write(f"JPEGImages/{names[k % len(names)]}.jpg SegmentationClassAug/{names[k % len(names)]}.png\n")
    return rel


# ---------------------------------------------------------------- hszhao/semseg's pipeline, from its published code
class SemsegData(Dataset):
    """semseg's ``util/dataset.py`` ``SemData`` (train split): OpenCV reads, float32 image, its transform."""

    def __init__(self, samples: list[tuple[str, str]], transform: Callable) -> None:
        self.data_list, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.data_list)

    def __getitem__(self, index: int):
        image_path, label_path = self.data_list[index]
        image = cv2.imread(image_path, cv2.IMREAD_COLOR)  # BGR
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        image = np.float32(image)
        label = cv2.imread(label_path, cv2.IMREAD_GRAYSCALE)
        if image.shape[0] != label.shape[0] or image.shape[1] != label.shape[1]:
            raise RuntimeError("Image & label shape mismatch: " + image_path + " " + label_path + "\n")
        return self.transform(image, label)


def semseg_transform(crop: int, scale: tuple[float, float], rotate: tuple[float, float],
                     ignore: int) -> Callable:
    """tool/train.py's ``train_transform`` with util/transform.py's classes (arguments as there)."""
    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)

    def rand_scale(image, label):
        s = scale[0] + (scale[1] - scale[0]) * random.random()
        image = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST)
        return image, label

    def rand_rotate(image, label):
        if random.random() < 0.5:
            angle = rotate[0] + (rotate[1] - rotate[0]) * random.random()
            h, w = label.shape
            matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
            image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=mean)
            label = cv2.warpAffine(label, matrix, (w, h), flags=cv2.INTER_NEAREST,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=ignore)
        return image, label

    def blur(image, label):
        if random.random() < 0.5:
            image = cv2.GaussianBlur(image, (5, 5), 0)
        return image, label

    def flip(image, label):
        if random.random() < 0.5:
            image, label = cv2.flip(image, 1), cv2.flip(label, 1)
        return image, label

    def crop_rand(image, label):
        h, w = label.shape
        pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
        pad_h_half, pad_w_half = int(pad_h / 2), int(pad_w / 2)
        if pad_h > 0 or pad_w > 0:
            border = (pad_h_half, pad_h - pad_h_half, pad_w_half, pad_w - pad_w_half)
            image = cv2.copyMakeBorder(image, *border, cv2.BORDER_CONSTANT, value=mean)
            label = cv2.copyMakeBorder(label, *border, cv2.BORDER_CONSTANT, value=ignore)
        h, w = label.shape
        h_off, w_off = random.randint(0, h - crop), random.randint(0, w - crop)
        return image[h_off:h_off + crop, w_off:w_off + crop], label[h_off:h_off + crop, w_off:w_off + crop]

    def to_tensor(image, label):
        image = torch.from_numpy(image.transpose((2, 0, 1)))
        if not isinstance(image, torch.FloatTensor):
            image = image.float()
        label = torch.from_numpy(label)
        if not isinstance(label, torch.LongTensor):
            label = label.long()
        return image, label

    def normalize(image, label):
        for t, m, s in zip(image, mean, std):
            t.sub_(m).div_(s)
        return image, label

    steps = (rand_scale, rand_rotate, blur, flip, crop_rand, to_tensor, normalize)

    def compose(image, label):
        for step in steps:
            image, label = step(image, label)
        return image, label

    return compose


def _semseg_worker_init(worker_id: int) -> None:
    cv2.setNumThreads(0)  # semseg's train.py sets it at import; its forked workers inherit it


def semseg_loader(cfg: Config, workers: int, device: torch.device) -> DataLoader:
    """tool/train.py's training DataLoader over :class:`SemsegData` (one process: shuffle, no sampler)."""
    d, t = cfg.data, cfg.train
    transform = semseg_transform(t.crop_size, (d.scale_min, d.scale_max), (d.rotate_min, d.rotate_max),
                                 d.ignore_label)
    data = SemsegData(read_list(d.root, d.train_list), transform)
    return DataLoader(data, batch_size=t.batch_size, shuffle=True, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=True, worker_init_fn=_semseg_worker_init)


# ---------------------------------------------------------------- segkd's loader, and its earlier states
def check_label_bincount(label: np.ndarray, classes: int, ignore_label: int, path: str) -> None:
    """segkd's label check before the lever: a 256-bin histogram of every label (the verdict is the same)."""
    counts = np.bincount(label.ravel(), minlength=256)
    counts[:classes] = 0
    if 0 <= ignore_label < counts.size:
        counts[ignore_label] = 0
    if np.flatnonzero(counts).size:
        raise ValueError(f"{path}: label values outside 0..{classes - 1}")


class EarlierReader(SegDataset):
    """``SegDataset`` with the earlier readers: PIL for every image (``pil``) and the histogram check (``bincount``)."""

    def __init__(self, *args, pil: bool, bincount: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pil, self.bincount = pil, bincount

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not (self.pil or self.bincount):
            return super().read(index)
        image_path, label_path = self.samples[index]
        if self.pil:
            with open(image_path, "rb") as f:
                image = decode_pil(f.read(), image_path)
        else:
            image = read_image(image_path)
        label = read_label(label_path)
        check_label_bincount(label, self.classes, self.ignore_label, label_path)
        return image, label


# (row name, PIL decoding, histogram check, one-pass batch, label dtype in the batch); build_data's rows follow
LEVERS = [
    ("segkd before: PIL, bincount, per-sample tensors, int64 labels", True, True, False, torch.int64),
    ("+ cv2.imdecode for plain JPEGs", False, True, False, torch.int64),
    ("+ label check by comparison, not bincount", False, False, False, torch.int64),
    ("+ one-pass batch assembly (normalised into the batch)", False, False, True, torch.int64),
]
FLOAT32 = "+ uint8 labels, int64 on the device (train.uint8_batches=false: semseg's float32 values)"
SEGKD = "segkd (default: + uint8 batches, normalised on the device; rounds)"


def earlier_loader(cfg: Config, workers: int, device: torch.device, lever: tuple) -> DataLoader:
    """segkd's loader with only the levers of ``lever`` (a row of :data:`LEVERS`)."""
    _, pil, bincount, one_pass, label_dtype = lever
    d, t = cfg.data, cfg.train
    transform = build_train_transform(t.crop_size, (d.scale_min, d.scale_max), (d.rotate_min, d.rotate_max),
                                      d.ignore_label, to_tensor=not one_pass)
    dataset = EarlierReader(d.root, d.train_list, d.classes, d.ignore_label, transform, to_tensor=not one_pass,
                            pil=pil, bincount=bincount)
    collate = functools.partial(collate_crops, label_dtype=label_dtype) if one_pass else None
    loader, sampler = build_train_loader(dataset, t.batch_size, workers, t.seed, 0, 1, device.type == "cuda",
                                         collate_fn=collate)
    sampler.set_epoch(0)
    return loader


def segkd_loader(cfg: Config, workers: int, device: torch.device, uint8: bool) -> DataLoader:
    tree = cfg.to_dict()
    tree["train"]["workers"], tree["train"]["uint8_batches"] = workers, uint8
    loader, sampler = build_data(Config(tree), DistInfo(rank=0, local_rank=0, world_size=1, device=device))
    sampler.set_epoch(0)
    return loader


# ---------------------------------------------------------------- timing
def _cpu_seconds(pid: int) -> float:
    """CPU time of every thread of process ``pid`` so far (/proc/<pid>/task/*/schedstat, in ns)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def measure(loader: DataLoader, batches: int, device: torch.device) -> dict:
    """Rates over ``batches`` batches after the first ``skip = max(1, workers)`` of an epoch that holds exactly
    ``skip + batches`` (so no work runs past the last one), each batch finished as the trainer does (on ``device``).
    ``wall``: samples/s; ``cpu``: samples per CPU-second of the main process and its workers (per core); ``cpu_loader``:
    the same without the finishing step (what a GPU's host spends before the copy: there the int64 conversion and a
    uint8 batch's normalisation run on the GPU). The first ``skip`` batches, made side by side by the workers, hold
    their start-up (fork, copy-on-write of the parent): not throughput; they are not finished, so the workers have not
    run ahead of the window when it opens."""
    it = iter(loader)
    workers = [w.pid for w in getattr(it, "_workers", [])]
    for _ in range(max(1, len(workers))):
        next(it)  # not finished here: a slow finishing step would let the workers run ahead of the window
    start, cpu0, finish, samples = time.perf_counter(), time.process_time(), 0.0, 0
    worker0 = sum(_cpu_seconds(pid) for pid in workers)
    for _ in range(batches):
        images, labels = next(it)
        f0 = time.process_time()
        images, labels = batch_to_device(images, labels, device)
        finish += time.process_time() - f0
        samples += images.shape[0]
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0 + sum(_cpu_seconds(pid) for pid in workers) - worker0
    del it  # shuts the workers down
    return {"wall": samples / wall, "cpu": samples / cpu, "cpu_loader": samples / (cpu - finish)}


def pipelines(device: torch.device, levers: bool) -> dict[str, Callable[[Config, int], DataLoader]]:
    """Row name -> a function of (config, worker count) building that loader."""
    rows: dict[str, Callable[[Config, int], DataLoader]] = {"semseg": lambda c, w: semseg_loader(c, w, device)}
    if levers:
        rows.update({lever[0]: functools.partial(earlier_loader, device=device, lever=lever) for lever in LEVERS})
    if levers:
        rows[FLOAT32] = lambda c, w: segkd_loader(c, w, device, uint8=False)
    rows[SEGKD] = lambda c, w: segkd_loader(c, w, device, uint8=True)
    return rows


METRICS = ("cpu", "cpu_loader", "wall")


def compare(cfg: Config, workers: list[int], batches: int, repeats: int, levers: bool,
            device: Optional[torch.device] = None) -> dict:
    """Every pipeline at every worker count, ``repeats`` times interleaved (the order rotated each repeat), on the
    images under ``cfg.data.root`` (a list of each epoch's length is written beside them). Returns
    ``{"rows": [{"pipeline", "workers", and per metric of :func:`measure` its median, its values ("<m>_all") and the
    median of its ratios to semseg paired within a repeat ("<m>_ratio")}], "load": [1-min load average before,
    after]}``."""
    device = device or torch.device("cpu")
    build = pipelines(device, levers)
    names = list(build)
    names_on_disk = sorted(f[:-4] for f in os.listdir(os.path.join(cfg.data.root, "JPEGImages")))
    configs = {}
    for w in workers:  # an epoch of exactly the batches measure() reads
        tree = cfg.to_dict()
        samples = (batches + max(1, w)) * cfg.train.batch_size
        tree["data"]["train_list"] = write_list(cfg.data.root, names_on_disk, samples)
        configs[w] = Config(tree)
    runs: dict[tuple[str, int], list[dict]] = {(n, w): [] for n in names for w in workers}
    load_before = os.getloadavg()[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # both pipelines alike: at 0 workers a rate is one core's
    cv2.setNumThreads(0)
    try:
        for r in range(repeats):
            for w in workers:
                for name in names[r % len(names):] + names[:r % len(names)]:
                    runs[(name, w)].append(measure(build[name](configs[w], w), batches, device))
    finally:
        torch.set_num_threads(threads)
    rows = []
    for name in names:
        for w in workers:
            row: dict = {"pipeline": name, "workers": w}
            for m in METRICS:
                values = [run[m] for run in runs[(name, w)]]
                ratios = [a[m] / b[m] for a, b in zip(runs[(name, w)], runs[("semseg", w)])]
                row.update({m: statistics.median(values), f"{m}_all": values,
                            f"{m}_ratio": statistics.median(ratios)})
            rows.append(row)
    return {"rows": rows, "load": [load_before, os.getloadavg()[0]], "repeats": repeats, "batches": batches,
            "batch": cfg.train.batch_size, "crop": cfg.train.crop_size}


def run_loader_benchmark(cfg: Config, workers: list[int], batches: int, repeats: int, levers: bool,
                         images: int, root: Optional[str] = None) -> dict:
    """Generate the data (into ``root`` or a temporary folder) and :func:`compare` the pipelines on it."""
    with tempfile.TemporaryDirectory(prefix="segkd_loader_") as tmp:
        root = root or os.path.join(tmp, "voc_like")
        write_voc_like(root, images)
        tree = cfg.to_dict()
        tree["data"]["root"] = root
        return {**compare(Config(tree), workers, batches, repeats, levers), "images": images}


def format_loader(result: dict) -> str:
    """One table per metric: rows the pipelines, columns the worker counts, cells "rate (ratio to semseg)"."""
    workers = sorted({r["workers"] for r in result["rows"]})
    by_name: dict[str, dict[int, dict]] = {}
    for r in result["rows"]:
        by_name.setdefault(r["pipeline"], {})[r["workers"]] = r
    lines = [f"loader vs semseg: batch {result['batch']}, crop {result['crop']}, {result['images']} images, "
             f"{result['batches']} batches x {result['repeats']} interleaved repeats (medians, ratios paired "
             f"per repeat); load {result['load'][0]:.2f} -> {result['load'][1]:.2f}"]
    titles = {"cpu": "samples per CPU-second, batches finished on the CPU",
              "cpu_loader": "samples per CPU-second, loader only (finishing left to a GPU)",
              "wall": "samples per second (wall clock)"}
    for m in METRICS:
        lines += ["", f"{titles[m]}:", "| pipeline | " + " | ".join(f"{w} workers" for w in workers) + " |",
                  "|---|" + "---|" * len(workers)]
        lines += [f"| {name} | " + " | ".join(f"{cells[w][m]:.1f} ({cells[w][m + '_ratio']:.2f}x)" for w in workers)
                  + " |" for name, cells in by_name.items()]
    return "\n".join(lines)
