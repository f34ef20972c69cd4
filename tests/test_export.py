"""Export (engine/export.py, tools/export.py): TorchScript and ONNX give eager's logits within 1e-4 on a tiny
2-class PSPNet-R18 at 65x49 and 64x64, from one graph traced at 64x64 (height and width dynamic); the exported
network is evaluation's (its argmax is engine.inference.predict's whole-image class map); the CLI checks, refuses
to overwrite and writes nothing when the check fails."""

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.transforms import normalize
from engine.export import (
    InferenceNetwork,
    MatrixAdaptiveAvgPool2d,
    example_input,
    export,
    load_exported,
    max_differences,
    onnx_ready,
)
from engine.inference import predict
from model.build import checkpoint_meta
from model.pspnet import build_pspnet
from tools import export as export_cli
from util.checkpoint import save_checkpoint
from util.config import load_config

SIZES = [(65, 49), (64, 64)]  # one side not a multiple of 8, and the traced size


def tiny_checkpoint(path: str, align_corners: bool = True) -> str:
    """A random-init 2-class PSPNet-R18 saved as a segkd checkpoint (as train.py's final.pth)."""
    cfg = load_config(None, ["data.classes=2", "model.layers=18", f"model.align_corners={str(align_corners).lower()}"])
    torch.manual_seed(0)
    model = build_pspnet(18, 2, align_corners=align_corners)
    save_checkpoint({**checkpoint_meta(cfg.model, cfg, "supervised"), "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return InferenceNetwork(build_pspnet(18, 2)).eval()


@pytest.fixture(scope="module")
def exported(network, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    files = {}
    for fmt in ("torchscript", "onnx"):
        if fmt == "onnx":
            pytest.importorskip("onnxruntime", reason="onnxruntime (requirements-dev.txt) runs the ONNX file")
        files[fmt] = str(folder / f"tiny.{fmt}")
        export(network, fmt, files[fmt], (64, 64))
    return files


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_logits_equal_eager_at_two_sizes(network, exported, fmt):
    if fmt not in exported:
        pytest.skip("onnxruntime is not installed")
    run = load_exported(exported[fmt], fmt)
    for (h, w), (diff, largest) in zip(SIZES, max_differences(network, run, SIZES)):
        assert diff < 1e-4, f"{fmt} at {h}x{w}: max abs difference {diff}"
        assert largest > 0.1  # the logits are not all zero: the comparison means something
        assert tuple(run(example_input(h, w)).shape) == (1, 2, h, w)


def test_the_exported_network_is_evaluations(network):
    """Normalisation is data.transforms.normalize bit for bit, and the argmax of the logits is predict()'s class map
    with the whole image at its own size (what deploy/cpp computes)."""
    x = example_input(49, 65)
    seen = {}
    handle = network.segmentor.backbone.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    with torch.no_grad():
        logits = network(x)
    handle.remove()
    assert torch.equal(seen["x"], normalize(x))
    image = x[0].permute(1, 2, 0).numpy().astype(np.uint8).astype(np.float32)
    with torch.no_grad():
        logits = network(torch.from_numpy(image).permute(2, 0, 1)[None].contiguous())
    pred = predict(network.segmentor, image, 2, 65, 65, [1.0], False, 1.0, torch.device("cpu"), "whole", "long")
    assert np.array_equal(logits.argmax(1)[0].numpy(), pred)


def test_logits_are_zoomed_with_the_networks_align_corners():
    torch.manual_seed(0)
    net = InferenceNetwork(build_pspnet(18, 2, align_corners=False)).eval()
    x = example_input(40, 48)
    with torch.no_grad():
        small = net.segmentor(normalize(x), aux=False)["out"]
        assert torch.equal(net(x), F.interpolate(small, size=(40, 48), mode="bilinear", align_corners=False))


@pytest.mark.parametrize("size", [(13, 22), (9, 9), (6, 7), (1, 5)])
def test_matrix_pool_is_adaptive_average_pooling(size):
    x = torch.randn(2, 3, *size)
    for bins in (1, 2, 3, 6, (2, 3)):
        want = nn.AdaptiveAvgPool2d(bins)(x)
        got = MatrixAdaptiveAvgPool2d(bins)(x)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-6, (size, bins)


def test_onnx_copy_replaces_every_adaptive_pool_and_leaves_the_network(network):
    copy = onnx_ready(network)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in copy.modules())
    assert sum(isinstance(m, MatrixAdaptiveAvgPool2d) for m in copy.modules()) == 4  # the PPM's bins
    assert sum(isinstance(m, nn.AdaptiveAvgPool2d) for m in network.modules()) == 4


def test_cli_exports_checks_and_refuses_to_overwrite(tmp_path, capsys):
    ckpt = tiny_checkpoint(str(tmp_path / "final.pth"))
    out = str(tmp_path / "tiny.pt")
    assert export_cli.main(["--checkpoint", ckpt, "--format", "torchscript", out, "--size", "32", "32"]) == 0
    printed = capsys.readouterr().out
    assert "check 32x32: max abs difference" in printed and "check 41x43" in printed and "FAILED" not in printed
    before = os.path.getmtime(out), os.path.getsize(out)
    assert export_cli.main(["--checkpoint", ckpt, "--format", "torchscript", out, "--size", "32", "32"]) == 2
    assert "already exists" in capsys.readouterr().err and (os.path.getmtime(out), os.path.getsize(out)) == before
    assert set(os.listdir(tmp_path)) == {"final.pth", "tiny.pt"}  # no OUT.tmp left


def test_cli_writes_nothing_when_the_check_fails(tmp_path, capsys, monkeypatch):
    ckpt = tiny_checkpoint(str(tmp_path / "final.pth"))
    monkeypatch.setattr(export_cli, "tolerance", lambda largest: -1.0)  # any difference fails
    out = str(tmp_path / "tiny.pt")
    assert export_cli.main(["--checkpoint", ckpt, "--format", "torchscript", out, "--size", "32", "32"]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert set(os.listdir(tmp_path)) == {"final.pth"}  # neither OUT nor OUT.tmp


def test_cli_bad_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "final.pth"
    bad.write_bytes(b"not a checkpoint")
    assert export_cli.main(["--checkpoint", str(bad), "--format", "onnx", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}") and "\n" not in err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_without_onnxruntime_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    ckpt = tiny_checkpoint(str(tmp_path / "final.pth"))
    assert export_cli.main(["--checkpoint", ckpt, "--format", "onnx", str(tmp_path / "x.onnx")]) == 2
    assert "error: onnxruntime is not installed" in capsys.readouterr().err
    assert set(os.listdir(tmp_path)) == {"final.pth"}
