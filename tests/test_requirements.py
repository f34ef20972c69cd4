"""The declared lower bounds are real: every version-sensitive API the code calls is no newer than the floor
requirements.txt and pyproject.toml state (the same floor in both), and exists under that name here."""

import importlib
import os
import re

import pytest

from tests.conftest import REPO

# API the code calls -> (package, the first release that has it under this name, a file that calls it, how)
API_FLOORS = {
    "torch.amp.GradScaler": ("torch", (2, 3), "engine/trainer.py", "torch.amp.GradScaler("),  # torch.cuda.amp before
    "torch.autocast": ("torch", (1, 10), "engine/trainer.py", "torch.autocast("),
    "torch.utils.flop_counter.FlopCounterMode": ("torch", (2, 1), "engine/flops.py",
                                                 "from torch.utils.flop_counter import FlopCounterMode"),
    "torch.inference_mode": ("torch", (1, 9), "engine/inference.py", "torch.inference_mode("),
    "torchvision.models.ResNet50_Weights": ("torchvision", (0, 13), "model/backbone.py",
                                            "torchvision.models.ResNet50_Weights"),
}


def floors(path: str, pattern: str) -> dict[str, tuple[int, ...]]:
    text = open(os.path.join(REPO, path), encoding="utf-8").read()
    return {name: tuple(int(x) for x in version.split(".")) for name, version in re.findall(pattern, text)}


def test_requirements_and_pyproject_state_the_same_floors():
    req = floors("requirements.txt", r"(?m)^([A-Za-z0-9_-]+)>=([0-9.]+)")
    pyproject = floors("pyproject.toml", r'"([A-Za-z0-9_-]+)>=([0-9.]+)"')
    assert req == {k: v for k, v in pyproject.items() if k in req}
    assert req["torch"] >= (2, 3) and req["torchvision"] >= (0, 18)  # the pair that ships together


@pytest.mark.parametrize("api", list(API_FLOORS))
def test_every_api_is_within_the_floor_and_exists(api):
    package, since, user, call = API_FLOORS[api]
    assert floors("requirements.txt", r"(?m)^([A-Za-z0-9_-]+)>=([0-9.]+)")[package] >= since, api
    module_name, _, attr = api.rpartition(".")
    assert hasattr(importlib.import_module(module_name), attr), api
    # the table describes the code: the file named still calls the API this way
    assert call in open(os.path.join(REPO, user), encoding="utf-8").read(), (api, user)
