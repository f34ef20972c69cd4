"""distill.teacher_cache: a hit returns exactly what the teacher computed for exactly that batch."""

import os

import pytest
import torch
from torch import nn

from model.distiller import Distiller
from model.teacher_cache import TeacherCache, file_digest
from util.errors import SegKDError


class TinySeg(nn.Module):
    """{'out','aux'} logits at 1/4 resolution from two convolutions: a stand-in PSPNet."""

    def __init__(self, classes=3):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.out, self.aux = nn.Conv2d(8, classes, 1), nn.Conv2d(8, classes, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        f = torch.relu(self.body(x))
        return {"out": self.out(f), "aux": self.aux(f)}


def make(cache, seed=0):
    torch.manual_seed(seed)
    return Distiller(TinySeg(), TinySeg(), feat_loss="kl", temperature=2.0, teacher_cache=cache)


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 16, 16, generator=g), torch.randint(0, 3, (2, 16, 16), generator=g)


def test_second_run_reuses_the_teacher_and_gets_identical_losses(tmp_path):
    images, target = batch(1)
    plain = make(None)
    total, terms = plain(images, target)
    first = make(TeacherCache(str(tmp_path / "c"), "teacher-a"))
    total1, _ = first(images, target)
    second = make(TeacherCache(str(tmp_path / "c"), "teacher-a"))
    total2, terms2 = second(images, target)
    assert (first.teacher_cache.misses, first.teacher_cache.hits) == (1, 0)
    assert (second.teacher_cache.misses, second.teacher_cache.hits) == (0, 1)
    assert second.teacher.calls == 0  # the teacher did not run at all
    assert torch.equal(total, total1) and torch.equal(total, total2)
    assert all(torch.equal(terms[k], terms2[k]) for k in terms)
    total2.backward()  # cached logits are ordinary tensors: the student's graph is intact
    assert second.student.out.weight.grad is not None


def test_another_batch_or_teacher_misses(tmp_path):
    directory = str(tmp_path / "c")
    make(TeacherCache(directory, "teacher-a"))(*batch(1))
    other_batch = make(TeacherCache(directory, "teacher-a"))
    other_batch(*batch(2))
    assert other_batch.teacher_cache.hits == 0 and other_batch.teacher.calls == 1
    other_teacher = make(TeacherCache(directory, "teacher-b"))
    other_teacher(*batch(1))
    assert other_teacher.teacher_cache.hits == 0 and other_teacher.teacher.calls == 1
    # one pixel changed is another batch
    images, target = batch(1)
    images[0, 0, 0, 0] += 1e-3
    one_pixel = make(TeacherCache(directory, "teacher-a"))
    one_pixel(images, target)
    assert one_pixel.teacher_cache.hits == 0


def test_damaged_entry_is_named(tmp_path):
    cache = TeacherCache(str(tmp_path / "c"), "teacher-a")
    images, target = batch(1)
    make(cache)(images, target)
    entry = cache._path(cache.key(images))
    with open(entry, "wb") as f:
        f.write(b"not a tensor file")
    with pytest.raises(SegKDError, match=os.path.basename(entry)):
        make(TeacherCache(str(tmp_path / "c"), "teacher-a"))(images, target)


def test_an_entry_deleted_after_the_check_is_a_miss(tmp_path, monkeypatch):
    """A table's DROP_LAST=1 may empty the cache while another run reads it: a vanished entry is computed again."""
    cache = TeacherCache(str(tmp_path / "c"), "teacher-a")
    images, target = batch(1)
    make(cache)(images, target)
    entry = cache._path(cache.key(images))
    os.remove(entry)
    monkeypatch.setattr(os.path, "isfile", lambda path: True)  # the check passed just before the deletion
    assert cache.get(cache.key(images), torch.device("cpu")) is None and (cache.hits, cache.misses) == (0, 2)


def test_file_digest_tracks_content(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"x" * 10)
    b.write_bytes(b"x" * 9 + b"y")
    assert file_digest(str(a)) != file_digest(str(b))
    assert file_digest(str(a)) == file_digest(str(a))


PRECISIONS = {"off": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def under(precision):
    dtype = PRECISIONS[precision]
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)


def test_key_names_the_autocast_dtype(tmp_path):
    cache = TeacherCache(str(tmp_path / "c"), "teacher-a")
    images, _ = batch(1)
    keys = {}
    for precision in PRECISIONS:
        with under(precision):
            keys[precision] = cache.key(images)
    assert len(set(keys.values())) == 3, keys  # fp16, bf16 and fp32 logits never share an entry
    assert cache.key(images) == keys["off"]  # outside any autocast context: the fp32 key
    with torch.autocast("cpu", dtype=torch.float16, enabled=False):  # a disabled context is fp32, whatever dtype
        assert cache.key(images) == keys["off"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cache.key(images) == keys["bfloat16"]  # and the key is stable


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the same batch on another device type")
def test_key_names_the_device_type(tmp_path):
    cache = TeacherCache(str(tmp_path / "c"), "teacher-a")
    images, _ = batch(1)
    assert cache.key(images) != cache.key(images.cuda())


@pytest.mark.parametrize("first, second", [("float16", "bfloat16"), ("bfloat16", "float16"), ("float16", "off")])
def test_a_run_at_another_precision_does_not_hit(tmp_path, first, second):
    """A bf16 run after an fp16 one (same teacher, same batch) runs its own teacher; a rerun at the first
    precision still hits, with exactly the logits that run computed."""
    directory, (images, target) = str(tmp_path / "c"), batch(1)
    runs = {}
    for name, precision in (("first", first), ("second", second), ("again", first)):
        runs[name] = make(TeacherCache(directory, "teacher-a"))
        with under(precision):
            runs[name](images, target)
    assert runs["first"].teacher.calls == 1 and runs["first"].teacher_cache.misses == 1
    assert runs["second"].teacher.calls == 1 and runs["second"].teacher_cache.hits == 0
    assert runs["again"].teacher.calls == 0 and runs["again"].teacher_cache.hits == 1
    with under(first):
        expected = make(None).teacher_logits(images)
        cached = runs["again"].teacher_logits(images)
    assert all(torch.equal(cached[k], expected[k]) for k in expected)
