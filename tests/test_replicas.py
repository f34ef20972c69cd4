"""Trainer.check_replicas: after training under torchrun every process must hold the same student and the same
distillation connectors (DDP averages the student's gradients, the trainer the connectors' own). The gather is
replaced here by what other processes would send; tests/test_train_e2e.py runs it under torchrun for real."""

from types import SimpleNamespace

import pytest
from torch import nn

from engine import trainer as trainer_module
from engine.trainer import Trainer
from util.errors import SegKDError


class Log:
    def __init__(self):
        self.lines = []

    def info(self, text):
        self.lines.append(text)


def fake_trainer(connector: bool):
    student = nn.Conv2d(3, 4, 1)
    methods = nn.ModuleList([nn.Conv2d(4, 4, 1)] if connector else [])
    distiller = SimpleNamespace(student=student, trainable_parameters=lambda: list(methods.parameters()))
    return SimpleNamespace(info=SimpleNamespace(distributed=True, world_size=2), distiller=distiller, log=Log(),
                           meta={})


def gather_as(other):
    """all_gather_objects as two processes would see it: this one's digests, then ``other(digests)``."""
    return lambda obj, world_size: [obj, other({k: v.clone() for k, v in obj.items()})]


def shifted(name):
    def other(digests):
        digests[name][0] += 1e-6  # one parameter tensor of the other process off by a float's worth
        return digests
    return other


@pytest.mark.parametrize("connector", [False, True])
def test_identical_replicas_pass_and_say_what_was_compared(monkeypatch, connector):
    self = fake_trainer(connector)
    monkeypatch.setattr(trainer_module, "all_gather_objects", gather_as(lambda d: d))
    Trainer.check_replicas(self)
    what = "student and distillation connector" if connector else "student"
    assert self.log.lines == [f"{what} parameters identical on all 2 processes"]


@pytest.mark.parametrize("name", ["student", "distillation connector"])
def test_a_desync_of_the_student_or_a_connector_is_an_error_naming_it(monkeypatch, name):
    self = fake_trainer(connector=True)
    monkeypatch.setattr(trainer_module, "all_gather_objects", gather_as(shifted(name)))
    by = "DDP" if name == "student" else "the trainer's gradient averaging"
    with pytest.raises(SegKDError, match=f"^{name} weights differ between processes after training \\({by} out of"):
        Trainer.check_replicas(self)
    assert self.log.lines == []


def test_one_process_compares_nothing(monkeypatch):
    self = fake_trainer(connector=True)
    self.info.distributed = False
    monkeypatch.setattr(trainer_module, "all_gather_objects", lambda *a: pytest.fail("gathered without torchrun"))
    Trainer.check_replicas(self)
    assert self.log.lines == []
