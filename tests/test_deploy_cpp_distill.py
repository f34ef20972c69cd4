"""deploy/cpp/segkd_distill and ``tools.export --trainable``: one C++ step of CE + per-pixel KD with SGD equals the
same step in Python (model/losses.py's cross_entropy and kd_kl_loss at full resolution, torch.optim.SGD with
train.py's two lr groups) on the loss and on every updated weight within 1e-5; palette labels (VOC's, a short PLTE
with pixels past it, entries sharing a colour) give exactly the step of greyscale ones; bad input (a label that is not
class indices, a wrong --root) is one line, exit 2, nothing written. Fast tier: the trainable export (outputs,
gradients, frozen BatchNorm, the mark). Slow and long tier: one build (about 45 s alone on the 2-core VM, more beside
other jobs) and a few runs of the program."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from data.palette import colorize, save_label_png, voc_palette
from engine.export import (
    BACKBONE_PREFIX,
    InferenceNetwork,
    TrainableStudent,
    export,
    export_trainable,
    load_exported,
    load_trainable,
)
from model.build import checkpoint_meta
from model.losses import cross_entropy, kd_kl_loss
from model.pspnet import build_pspnet
from tests.conftest import REPO
from tests.test_deploy_cpp import STB, missing_tools
from tools import export as export_cli
from util.checkpoint import save_checkpoint
from util.config import load_config
from util.errors import SegKDError

CLASSES = 4
STEP = {"lr": 0.01, "head_lr_mult": 10.0, "momentum": 0.9, "weight_decay": 1e-4, "temperature": 2.0,
        "kd_weight": 0.7, "ce_weight": 1.0, "aux_weight": 0.4}


def tiny_pspnet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_pspnet(18, CLASSES)


def test_trainable_student_keeps_batchnorm_frozen_and_gives_both_logits(tmp_path):
    student = TrainableStudent(tiny_pspnet(0)).train()
    assert not student.segmentor.training and not any(m.training for m in student.segmentor.modules())
    path = str(tmp_path / "student.pt")
    export_trainable(student, path, (33, 33), CLASSES)
    loaded = load_trainable(path)
    x = torch.rand(2, 3, 41, 35) * 255
    out, aux = loaded(x)
    want = student(x)
    assert out.shape == aux.shape == (2, CLASSES, 41, 35)
    assert torch.allclose(out, want[0], atol=1e-5) and torch.allclose(aux, want[1], atol=1e-5)
    params = dict(loaded.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    assert any(n.startswith(BACKBONE_PREFIX) for n in params) and any(not n.startswith(BACKBONE_PREFIX) for n in params)
    before = {n: b.clone() for n, b in loaded.named_buffers()}
    (out.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in params.values())  # BN weight and bias too
    loaded.train()(x)
    assert all(torch.equal(b, before[n]) for n, b in loaded.named_buffers())  # running statistics frozen


def test_an_inference_export_is_not_a_trainable_student(tmp_path):
    path = str(tmp_path / "teacher.pt")
    export(InferenceNetwork(tiny_pspnet(1)), "torchscript", path, (33, 33))
    with pytest.raises(SegKDError, match="teacher.pt: not a trainable student"):
        load_trainable(path)


def test_trainable_export_is_torchscript_only(tmp_path, capsys):
    ckpt = checkpoint(str(tmp_path / "s.pth"), 0)
    assert export_cli.main(["--checkpoint", ckpt, "--format", "onnx", "--trainable", str(tmp_path / "s.onnx")]) == 2
    assert "--trainable --format onnx" in capsys.readouterr().err
    assert not (tmp_path / "s.onnx").exists()


def checkpoint(path: str, seed: int) -> str:
    cfg = load_config(None, [f"data.classes={CLASSES}", "model.layers=18"])
    save_checkpoint({**checkpoint_meta(cfg.model, cfg, "supervised"), "model": tiny_pspnet(seed).state_dict()}, path)
    return path


def tiny_set(folder) -> str:
    """Two 33x33 RGB images with 4-class labels, the first three rows ignored (255); the list file's path."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (33, 33, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        label = rng.integers(0, CLASSES, (33, 33), dtype=np.uint8)
        label[:3] = 255
        Image.fromarray(label).save(folder / f"lab{i}.png")
        lines.append(f"img{i}.png lab{i}.png")
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    return str(folder / "train.txt")


def python_step(teacher_path: str, student_path: str, folder) -> tuple[float, dict[str, torch.Tensor]]:
    """The step segkd_distill takes, in Python: (loss, the student's parameters after SGD)."""
    images = torch.stack([torch.from_numpy(np.array(Image.open(folder / f"img{i}.png").convert("RGB")))
                          .permute(2, 0, 1).float() for i in range(2)])
    labels = torch.stack([torch.from_numpy(np.array(Image.open(folder / f"lab{i}.png"))).long() for i in range(2)])
    teacher = load_exported(teacher_path, "torchscript")
    student = load_trainable(student_path)
    named = dict(student.named_parameters())
    backbone = [p for n, p in named.items() if n.startswith(BACKBONE_PREFIX)]
    heads = [p for n, p in named.items() if not n.startswith(BACKBONE_PREFIX)]
    s = STEP
    sgd = torch.optim.SGD([{"params": backbone, "lr": s["lr"]}, {"params": heads, "lr": s["lr"] * s["head_lr_mult"]}],
                          lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])
    with torch.no_grad():
        t = teacher(images)
    out, aux = student(images)
    loss = (s["ce_weight"] * cross_entropy(out, labels) + s["aux_weight"] * cross_entropy(aux, labels)
            + s["kd_weight"] * kd_kl_loss(out, t, labels, s["temperature"], 255, full_resolution=True))
    sgd.zero_grad()
    loss.backward()
    sgd.step()
    return loss.item(), {n: p.detach().clone() for n, p in student.named_parameters()}


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """The built segkd_distill, a teacher (inference export) and a trainable student (tools.export --trainable)."""
    folder = tmp_path_factory.mktemp("distill")
    binary = str(folder / "segkd_distill")
    build = subprocess.run(["make", "-s", "deploy-distill", "STAMP=", f"PY={sys.executable}", f"DISTILL_BIN={binary}",
                            f"STB_INCLUDE={STB}"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    export(InferenceNetwork(tiny_pspnet(1)), "torchscript", str(folder / "teacher.pt"), (33, 33))
    assert export_cli.main(["--checkpoint", checkpoint(str(folder / "s.pth"), 0), "--format", "torchscript",
                            "--trainable", "--size", "33", "33", str(folder / "student.pt")]) == 0
    return binary, folder


def run(binary: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def flags() -> list[str]:
    return [x for k, v in STEP.items() for x in (f"--{k.replace('_', '-')}", repr(v))] + ["--steps", "1",
                                                                                         "--batch-size", "2"]


@pytest.fixture(scope="module")
def grey_step(program, tmp_path_factory):
    """One C++ step on tiny_set (8-bit greyscale labels): (its data folder, its stdout, the trained student's path)."""
    binary, folder = program
    data = tmp_path_factory.mktemp("grey")
    listing = tiny_set(data)
    out = str(tmp_path_factory.mktemp("grey_out") / "trained.pt")
    result = run(binary, str(folder / "teacher.pt"), str(folder / "student.pt"), listing, out, *flags())
    assert result.returncode == 0, result.stderr
    return data, result.stdout, out


def assert_refused(binary: str, args: list[str], message: str, folder, contents: list[str]) -> str:
    """Exit 2 with one stderr line holding ``message``, ``folder`` still holding just ``contents``; that line."""
    result = run(binary, *args)
    assert result.returncode == 2, (args, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert sorted(os.listdir(folder)) == contents, "something was written"
    return lines[0]


@pytest.mark.slow
@pytest.mark.long  # the build is most of a minute on 2 cores
@pytest.mark.skipif(bool(missing_tools()), reason=missing_tools() or "tools present")
def test_one_cpp_step_equals_the_python_step(program, grey_step):
    binary, folder = program
    data, stdout, out = grey_step
    teacher, student = str(folder / "teacher.pt"), str(folder / "student.pt")
    cpp_loss = float(stdout.split("loss ")[1].split()[0])

    py_loss, py_params = python_step(teacher, student, data)
    assert abs(cpp_loss - py_loss) < 1e-5, (cpp_loss, py_loss)
    trained = load_trainable(out)  # the output is a trainable student again
    before = dict(load_trainable(student).named_parameters())
    cpp_params = dict(trained.named_parameters())
    assert cpp_params.keys() == py_params.keys()
    worst = max((cpp_params[n] - py_params[n]).abs().max().item() for n in py_params)
    moved = max((py_params[n] - before[n]).abs().max().item() for n in py_params)
    print(f"C++ vs Python: loss {cpp_loss:.9g} vs {py_loss:.9g}, max weight difference {worst:.2e} "
          f"(largest update {moved:.2e})")
    assert worst < 1e-5
    assert moved > 1e-3  # the step changed the weights: the comparison means something
    buffers = dict(load_trainable(student).named_buffers())
    assert all(torch.equal(b, buffers[n]) for n, b in trained.named_buffers())  # BatchNorm statistics frozen


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.skipif(bool(missing_tools()), reason=missing_tools() or "tools present")
def test_bad_input_is_one_line_and_writes_nothing(program, tmp_path):
    binary, folder = program
    data = tmp_path / "data"
    data.mkdir()
    listing = tiny_set(data)
    teacher, student, out = str(folder / "teacher.pt"), str(folder / "student.pt"), str(tmp_path / "trained.pt")
    Image.fromarray(np.zeros((30, 33), np.uint8)).save(data / "small.png")
    (data / "mismatch.txt").write_text("img0.png small.png\n")
    (data / "missing.txt").write_text("img0.png lab0.png\nnone.png lab1.png\n")
    cases = [([teacher, teacher, listing, out], "teacher.pt: not a trainable student"),
             ([teacher, student, str(data / "absent.txt"), out], "absent.txt: cannot read the list file"),
             ([teacher, student, str(data / "missing.txt"), out], "none.png: cannot read image"),
             ([teacher, student, str(data / "mismatch.txt"), out], "small.png: 30x33 label, its image")]
    for args, message in cases:
        line = assert_refused(binary, args, message, tmp_path, ["data"])
        assert "--root" not in line  # the root hint is for a list in a `list` folder only


def assert_the_greyscale_step(program, grey_step, folder) -> None:
    """One C++ step on ``folder`` (tiny_set's images and list beside its labels rewritten): the printed loss and terms
    and every output weight are exactly those of the greyscale labels' step."""
    binary, models = program
    grey, grey_stdout, grey_out = grey_step
    for i in range(2):
        shutil.copy(grey / f"img{i}.png", folder)
    shutil.copy(grey / "train.txt", folder)
    out = str(folder / "trained.pt")
    result = run(binary, str(models / "teacher.pt"), str(models / "student.pt"), str(folder / "train.txt"), out,
                 *flags())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == grey_stdout.splitlines()[0]  # "step 1/1: loss L (ce C, aux A, kd K)"
    want = dict(load_trainable(grey_out).named_parameters())
    got = dict(load_trainable(out).named_parameters())
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.skipif(bool(missing_tools()), reason=missing_tools() or "tools present")
def test_voc_palette_labels_give_the_greyscale_step(program, grey_step, tmp_path):
    """The labels of tiny_set written as VOC palette PNGs (data/palette.py, as VOC and tools.synthetic write them)."""
    grey = grey_step[0]
    for i in range(2):
        save_label_png(str(tmp_path / f"lab{i}.png"), np.array(Image.open(grey / f"lab{i}.png")))
        with Image.open(tmp_path / f"lab{i}.png") as label:
            assert label.mode == "P" and label.getpixel((0, 0)) == 255  # stb_image sees (224, 224, 192) there
    assert_the_greyscale_step(program, grey_step, tmp_path)


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.skipif(bool(missing_tools()), reason=missing_tools() or "tools present")
@pytest.mark.parametrize("palette", ["short", "duplicate"])
def test_a_palette_label_is_its_indices_whatever_the_palette(program, grey_step, tmp_path, palette):
    """PIL's indices, as data/dataset.py reads them: a short PLTE (VOC's 21 colours, PIL writes 8 bits from 17 on)
    with the ignore pixels at 255, past it (stb_image gives those pixels uninitialised colours); entries 0 and 1 both
    black, pixels of both. The second label carries a tRNS chunk (PIL's transparency=0)."""
    grey = grey_step[0]
    colours = voc_palette()
    if palette == "short":
        colours = colours[:3 * 21]
    else:
        colours[3:6] = colours[0:3]
    for i in range(2):
        label = np.array(Image.open(grey / f"lab{i}.png"))
        colorize(label, colours).save(tmp_path / f"lab{i}.png", **({"transparency": 0} if i else {}))
        with Image.open(tmp_path / f"lab{i}.png") as saved:
            assert saved.mode == "P" and np.array_equal(np.array(saved), label)
            assert len(saved.getpalette()) == len(colours) and ("transparency" in saved.info) == (i == 1)
        assert {0, 1, 255} <= set(np.unique(label).tolist())  # both black entries' pixels; ignore pixels, past 21
    assert_the_greyscale_step(program, grey_step, tmp_path)


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.skipif(bool(missing_tools()), reason=missing_tools() or "tools present")
def test_labels_that_are_not_class_indices_are_refused(program, tmp_path):
    binary, folder = program
    data = tmp_path / "data"
    data.mkdir()
    tiny_set(data)
    label = np.array(Image.open(data / "lab0.png"))  # classes 0..3 and 255
    Image.fromarray(np.stack([label] * 3, axis=-1)).save(data / "rgb.png")
    Image.fromarray(label.astype(np.uint16)).save(data / "wide.png")
    Image.fromarray(label).convert("LA").save(data / "alpha.png")
    refusal = "{}: a label must hold class indices as an 8-bit greyscale or a palette image (this one is {})"
    cases = {"rgb.png": refusal.format("rgb.png", "an RGB PNG"),
             "wide.png": refusal.format("wide.png", "a greyscale PNG, 16 bits"),
             "alpha.png": refusal.format("alpha.png", "a greyscale + alpha PNG")}
    for name, message in cases.items():
        (data / "one.txt").write_text(f"img0.png {name}\n")
        args = [str(folder / "teacher.pt"), str(folder / "student.pt"), str(data / "one.txt"), str(tmp_path / "o.pt")]
        assert_refused(binary, [*args, "--batch-size", "1"], message, tmp_path, ["data"])


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.skipif(bool(missing_tools()), reason=missing_tools() or "tools present")
def test_a_list_in_a_list_folder_hints_the_root(program, tmp_path):
    """tools.synthetic's layout, ROOT/list/train_aug.txt with paths relative to ROOT: the default root (the list's
    folder) misses the files, and the error says which --root finds them."""
    binary, folder = program
    root = tmp_path / "voc"
    (root / "list").mkdir(parents=True)
    tiny_set(root)
    (root / "train.txt").rename(root / "list" / "train_aug.txt")
    args = [str(folder / "teacher.pt"), str(folder / "student.pt"), str(root / "list" / "train_aug.txt"),
            str(tmp_path / "o.pt")]
    line = assert_refused(binary, args, "img0.png: cannot read image", tmp_path, ["voc"])
    assert line.endswith(f"(--root defaults to the list's folder; the VOC layout's root is its parent: --root {root})")
    assert_refused(binary, [*args, "--root", str(tmp_path)], f"(it is under the list folder's parent: --root {root})",
                   tmp_path, ["voc"])
