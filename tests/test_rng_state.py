"""The RNG state a checkpoint holds (data/loader.py): the CUDA generator of the device in use only, so a resume
with fewer GPUs visible works; a GPU checkpoint resumed on a CPU (or the reverse) says so in one line. CUDA's
generator functions are emulated: no GPU here."""

import io
import random

import numpy as np
import torch

from data.loader import rng_state, set_rng_state

CPU = torch.device("cpu")


class FakeCuda:
    """``visible`` GPUs, each with its own generator state (a distinct byte tensor); records what is set."""

    def __init__(self, monkeypatch, visible: int, current: int = 0):
        self.states = {i: torch.full((16,), i + 1, dtype=torch.uint8) for i in range(visible)}
        self.current, self.visible = current, visible

        def index(device):
            if device == "cuda" or device is None:
                return self.current
            i = device.index if isinstance(device, torch.device) else int(device)
            if i >= visible:  # what CUDA's own functions do past the visible devices
                raise IndexError("tuple index out of range")
            return i

        def set_all(states):
            for i, s in enumerate(states):
                self.states[index(i)] = s.clone()

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[index(device)].clone())
        monkeypatch.setattr(torch.cuda, "set_rng_state",
                            lambda s, device="cuda": self.states.__setitem__(index(device), s.clone()))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [self.states[i].clone() for i in range(visible)])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)


def round_trip(state: dict) -> dict:
    """Through torch.save and a weights_only load, as a checkpoint."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_eight_gpu_checkpoint_resumes_with_four_visible(monkeypatch):
    """Rank 6 of an 8-GPU run saved on cuda:6; resumed as rank 2 of a 4-GPU run (cuda:2), where a set of all 8
    states fails with IndexError: only the saved device's generator is restored, into the device in use."""
    FakeCuda(monkeypatch, visible=8, current=6)
    state = round_trip(rng_state(torch.device("cuda", 6)))
    assert state["cuda_index"] == 6 and torch.equal(state["cuda"], torch.full((16,), 7, dtype=torch.uint8))
    fake = FakeCuda(monkeypatch, visible=4, current=2)
    assert set_rng_state(state, torch.device("cuda", 2)) is None
    assert torch.equal(fake.states[2], torch.full((16,), 7, dtype=torch.uint8))
    assert all(torch.equal(fake.states[i], torch.full((16,), i + 1, dtype=torch.uint8)) for i in (0, 1, 3))


def test_old_list_of_every_gpu_is_read_by_the_device_in_use(monkeypatch):
    """A checkpoint of the older format (one state per visible GPU) still resumes: the entry of the device in use."""
    fake = FakeCuda(monkeypatch, visible=8)
    old = {**rng_state(CPU), "cuda": torch.cuda.get_rng_state_all()}
    del old["cuda_index"]
    fake = FakeCuda(monkeypatch, visible=4, current=3)
    fake.states[3] = torch.zeros(16, dtype=torch.uint8)
    assert set_rng_state(round_trip(old), torch.device("cuda", 3)) is None
    assert torch.equal(fake.states[3], torch.full((16,), 4, dtype=torch.uint8))
    # a list too short for this device (saved with 2 visible, resumed on cuda:3): one line, no traceback
    short = {**old, "cuda": old["cuda"][:2]}
    note = set_rng_state(short, torch.device("cuda", 3))
    assert "2 GPU(s), none for cuda:3" in note and "\n" not in note


def test_gpu_checkpoint_on_cpu_and_cpu_checkpoint_on_gpu_say_so_in_one_line(monkeypatch):
    FakeCuda(monkeypatch, visible=2, current=1)
    gpu = round_trip(rng_state(torch.device("cuda", 1)))
    cpu = round_trip(rng_state(CPU))
    assert cpu["cuda"] is None
    fake = FakeCuda(monkeypatch, visible=1)
    before = fake.states[0].clone()
    note = set_rng_state(gpu, CPU)
    assert "saved by a GPU run" in note and "CUDA random state" in note and "\n" not in note
    note = set_rng_state(cpu, torch.device("cuda", 0))
    assert "saved by a CPU run" in note and "\n" not in note
    assert torch.equal(fake.states[0], before)  # nothing written into the GPU's generator


def test_cpu_states_are_restored_exactly():
    """The states every run has (Python, NumPy, torch CPU) carry over whatever the devices."""
    state = round_trip(rng_state(CPU))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(1)
    assert set_rng_state(state, CPU) is None
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected

