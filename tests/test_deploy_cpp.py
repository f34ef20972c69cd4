"""deploy/cpp: ``make deploy`` builds segkd_predict against the pip wheel's libtorch, and on a generated image it
writes the mask predict.py writes with the protocol it implements (the whole image at its own size, one scale, no
flip). Slow tier: one build (about a minute on the 2-core VM) and one run of the program."""

import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import predict
from engine.export import InferenceNetwork, export
from model.build import model_from_checkpoint
from tests.conftest import REPO
from tests.test_export import tiny_checkpoint

STB = os.environ.get("STB_INCLUDE", "/usr/include/stb")


def missing_tools() -> str:
    if shutil.which("g++") is None or shutil.which("make") is None:
        return "g++ or make not found"
    if not all(os.path.isfile(os.path.join(STB, h)) for h in ("stb_image.h", "stb_image_write.h")):
        return f"stb headers not in {STB} (apt-get install libstb-dev, or set STB_INCLUDE)"
    if not os.path.isdir(os.path.join(os.path.dirname(torch.__file__), "include", "torch", "csrc", "api")):
        return "this torch wheel ships no libtorch headers"
    return ""


@pytest.mark.slow
@pytest.mark.long  # the build is a minute on 2 cores
@pytest.mark.skipif(bool(missing_tools()), reason=missing_tools() or "tools present")
def test_cpp_program_gives_predict_pys_mask(tmp_path, capsys):
    binary = str(tmp_path / "segkd_predict")
    build = subprocess.run(["make", "-s", "deploy", "STAMP=", f"PY={sys.executable}", f"DEPLOY_BIN={binary}",
                            f"STB_INCLUDE={STB}"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]

    ckpt = tiny_checkpoint(str(tmp_path / "final.pth"))
    model, _ = model_from_checkpoint(ckpt, 2)
    export(InferenceNetwork(model), "torchscript", str(tmp_path / "tiny.pt"), (64, 64))
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (57, 70, 3), dtype=np.uint8)  # neither side a multiple of 8
    image[:, 35:] //= 4  # a dark half: both classes appear in the mask
    Image.fromarray(image).save(tmp_path / "scene.png")

    run = subprocess.run([binary, str(tmp_path / "tiny.pt"), str(tmp_path / "scene.png"), str(tmp_path / "cpp.png")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    cpp = cv2.imread(str(tmp_path / "cpp.png"), cv2.IMREAD_UNCHANGED)

    out = str(tmp_path / "py")
    assert predict.main(["--config", "config/synthetic/pspnet18_kd.yaml", "--out", out, str(tmp_path / "scene.png"),
                         f"test.checkpoint={ckpt}", "data.classes=2", "test.mode=whole", "test.base_size=70"]) == 0
    py = cv2.imread(os.path.join(out, "scene.png"), cv2.IMREAD_UNCHANGED)
    assert cpp.dtype == np.uint8 and cpp.shape == (57, 70)
    assert np.array_equal(cpp, py), f"{(cpp != py).sum()} pixels differ"
    assert set(np.unique(py)) == {0, 1}, "a one-class mask would not test the argmax"
