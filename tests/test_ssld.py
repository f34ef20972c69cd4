"""SSLD (PaddleClas's distillation on unlabelled images): the symmetric-KL choice ``distill.kd_loss=sym_kl`` against
NumPy, the unlabelled pool's loader (its mixing, its seeded order, resume), the rule that only label-free terms see
unlabelled images, and the bad inputs refused in one line before any run directory exists."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from model.losses import kd_kl_loss, sym_kl_loss
from tests.numpy_refs import np_sample

IGNORE = 255


def np_sym_kl(s: np.ndarray, t: np.ndarray, target: np.ndarray, temperature: float) -> float:
    """(KL(p_t||p_s) + KL(p_s||p_t)) / 2 per pixel at T, mean over the valid pixels (labels at the logit centres),
    times T²: PaddleClas's DMLLoss with pixels as its samples."""
    def log_softmax(x):
        x = x / temperature
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    ls, lt = log_softmax(s.astype(np.float64)), log_softmax(t.astype(np.float64))
    kl_ts = (np.exp(lt) * (lt - ls)).sum(axis=1)
    kl_st = (np.exp(ls) * (ls - lt)).sum(axis=1)
    valid = np_sample(target, s.shape[-2:]) != IGNORE
    return float(((kl_ts + kl_st) / 2)[valid].mean() * temperature**2)


def logits(seed: int, shape=(2, 5, 6, 7)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 2, torch.randn(*shape, generator=g) * 2


def labels(seed: int, size=(41, 49), classes=5):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (2, *size), generator=g)
    target[0, :12] = IGNORE
    target[1, :, 30:] = IGNORE
    return target


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_sym_kl_matches_numpy(temperature):
    s, t = logits(0)
    target = labels(1)
    got = sym_kl_loss(s, t, target, temperature).item()
    assert got == pytest.approx(np_sym_kl(s.numpy(), t.numpy(), target.numpy(), temperature), rel=1e-5)


def test_sym_kl_is_the_mean_of_both_kl_directions():
    s, t = logits(2)
    target = labels(3)
    both = (kd_kl_loss(s, t, target, 2.0) + kd_kl_loss(t, s, target, 2.0)) / 2
    assert sym_kl_loss(s, t, target, 2.0).item() == pytest.approx(both.item(), rel=1e-5)
    assert sym_kl_loss(s, t, target, 2.0).item() == pytest.approx(sym_kl_loss(t, s, target, 2.0).item(), rel=1e-6)


def test_sym_kl_paddleclas_value_at_t1():
    """One pixel per image, no ignore: PaddleClas's DMLLoss (softmax, batchmean KL both ways, halved)."""
    s, t = logits(4, (3, 5, 1, 1))
    ps, pt = torch.softmax(s[:, :, 0, 0], 1), torch.softmax(t[:, :, 0, 0], 1)
    paddle = (torch.nn.functional.kl_div(ps.log(), pt, reduction="batchmean")
              + torch.nn.functional.kl_div(pt.log(), ps, reduction="batchmean")) / 2
    assert sym_kl_loss(s, t, None).item() == pytest.approx(paddle.item(), rel=1e-5)


def test_sym_kl_zero_when_equal_gradient_towards_teacher_and_ignored_pixels():
    s, t = logits(5)
    target = labels(6)
    assert sym_kl_loss(t.clone(), t, target, 3.0).item() == pytest.approx(0.0, abs=1e-7)
    s.requires_grad_(True)
    loss = sym_kl_loss(s, t, target, 2.0)
    loss.backward()
    with torch.no_grad():
        lower = sym_kl_loss(s - 1e-2 * s.grad / s.grad.norm(), t, target, 2.0)
    assert lower.item() < loss.item()
    everything_ignored = sym_kl_loss(s, t, torch.full_like(target, IGNORE))
    assert everything_ignored.item() == 0.0
    changed = s.detach().clone()  # logits at ignored pixels change nothing
    changed[0, :, :1] += 5.0  # row 0 at 1/8 samples label row 0: ignored for image 0
    assert sym_kl_loss(changed, t, target).item() == pytest.approx(sym_kl_loss(s.detach(), t, target).item(), rel=1e-6)


# ---------------------------------------------------------------- the generator's pool
@pytest.fixture(scope="module")
def pool_set(tmp_path_factory):
    """A CPU-tier set of 6 train / 2 val images, 4 classes, and an unlabelled pool of 5."""
    from tools.synthetic import generate

    root = str(tmp_path_factory.mktemp("ssld") / "set")
    generate(root, train=6, val=2, classes=4, seed=0, workers=1, preset="cpu", unlabeled=5)
    return root


def tree_bytes(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_generator_pool_adds_images_and_a_list_only(pool_set, tmp_path):
    from tools.synthetic import generate

    plain = str(tmp_path / "plain")
    generate(plain, train=6, val=2, classes=4, seed=0, workers=1, preset="cpu")
    with_pool, without = tree_bytes(pool_set), tree_bytes(plain)
    extra = sorted(set(with_pool) - set(without))
    pool_images = [f"JPEGImages/unlabeled_{i:06d}.jpg" for i in range(5)]
    assert extra == sorted(pool_images + ["list/unlabeled.txt"])  # no label of the pool is written
    assert not any("unlabeled" in name for name in os.listdir(os.path.join(pool_set, "SegmentationClassAug")))
    assert with_pool["list/unlabeled.txt"].decode() == "".join(p + "\n" for p in pool_images)
    assert json.loads(with_pool["synthetic.json"]) == {**json.loads(without["synthetic.json"]), "unlabeled": 5}
    assert {k: v for k, v in with_pool.items() if k != "synthetic.json" and k in without} == {
        k: v for k, v in without.items() if k != "synthetic.json"}  # train and val: the same bytes
    train_images = {v for k, v in without.items() if k.startswith("JPEGImages/")}
    assert not train_images & {with_pool[p] for p in pool_images}  # the pool's scenes are new ones


def test_generator_cli_refuses_a_negative_pool(tmp_path, capsys):
    from tools.synthetic import main

    assert main(["--out", str(tmp_path / "x"), "--preset", "cpu", "--train", "2", "--val", "1",
                 "--unlabeled", "-1", "--workers", "1"]) == 2
    assert "--unlabeled" in capsys.readouterr().err


# ---------------------------------------------------------------- the unlabelled list and its dataset
@pytest.mark.parametrize("content, message", [
    ("", "lists no image"),
    ("\n\n", "lists no image"),
    ("JPEGImages/unlabeled_000000.jpg SegmentationClassAug/train_000000.png\n", "expected one image path, got 2"),
    ("/abs/image.jpg\n", "must be relative to the dataset root"),
    ("JPEGImages/nowhere.jpg\n", "file not found"),
    (b"\xff\xfe\xfa\n", "cannot read"),
])
def test_bad_unlabeled_list_is_one_line_naming_key_and_file(pool_set, tmp_path, content, message):
    from data.dataset import read_image_list
    from util.errors import SegKDError

    path = tmp_path / "pool.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SegKDError) as e:
        read_image_list(pool_set, str(path))
    text = str(e.value)
    assert "data.unlabeled_list=" in text and str(path) in text and message in text and "\n" not in text


def test_unreadable_or_missing_list(pool_set, tmp_path):
    from data.dataset import read_image_list
    from util.errors import SegKDError

    for bad in ("list/none.txt", str(tmp_path)):  # missing; a directory
        with pytest.raises(SegKDError, match=r"data.unlabeled_list=.*cannot read"):
            read_image_list(pool_set, bad)
    assert len(read_image_list(pool_set, "list/unlabeled.txt")) == 5


def test_unlabelled_crop_marks_the_image_and_ignores_the_padding(pool_set):
    from data.dataset import UnlabeledDataset
    from data.transforms import build_train_transform
    from util.config import UNLABELED_LABEL

    transform = build_train_transform(129, (0.5, 0.6), (-10, 10), IGNORE, to_tensor=False)  # 96 px scaled < 129
    ds = UnlabeledDataset(pool_set, "list/unlabeled.txt", transform, to_tensor=False)
    np.random.seed(0)
    image, label = ds[0]
    assert image.shape == (129, 129, 3) and label.dtype == np.uint8
    assert set(np.unique(label).tolist()) == {UNLABELED_LABEL, IGNORE}
    assert 2000 < (label == UNLABELED_LABEL).sum() < 58 ** 2 + 400  # the 48..58 px scaled image, rotated


# ---------------------------------------------------------------- the sampler: mixing, order, resume
def test_mixed_sampler_labelled_order_and_resume():
    from data.loader import MixedSampler, ResumableSampler

    n_l, n_u, world = 23, 11, 2
    for rank in range(world):
        mixed = MixedSampler(n_l, n_u, 3, 2, world, rank, seed=5)
        plain = ResumableSampler(range(n_l), world, rank, seed=5)
        assert mixed.batches == 11 // 3 and len(mixed) == 3 * 5
        for epoch in range(3):
            mixed.set_epoch(epoch)
            plain.set_epoch(epoch)
            keys = list(mixed)
            batches = [keys[i:i + 5] for i in range(0, len(keys), 5)]
            assert [k for b in batches for k in b[:3]] == list(plain)[:9]  # the labelled order is unchanged
            assert all(n_l <= i < n_l + n_u for b in batches for _, i in b[3:])
            for skip in range(4):  # a resume after `skip` batches yields the rest, key for key
                mixed.set_epoch(epoch, skip * 5)
                assert list(mixed) == keys[skip * 5:] and len(mixed) == len(keys) - skip * 5
    with pytest.raises(ValueError):
        MixedSampler(n_l, n_u, 3, 2, world, 0, seed=5).set_epoch(0, 4)


def test_mixed_sampler_pool_stream_covers_each_pass_once_per_rank():
    from data.loader import MixedSampler

    n_l, n_u, world = 40, 10, 2
    streams = []
    for rank in range(world):
        s = MixedSampler(n_l, n_u, 4, 3, world, rank, seed=1)
        stream = []
        for epoch in range(4):
            s.set_epoch(epoch)
            keys = list(s)
            stream += [k for i in range(0, len(keys), 7) for k in keys[i + 4:i + 7]]
        streams.append(stream)
    for p in range(3):  # pass p: 5 images per rank, together the whole pool, each once
        seen = [i for stream in streams for (q, i) in stream if q == p]
        assert sorted(seen) == list(range(n_l, n_l + n_u))
    assert [q for q, _ in streams[0][:12]] == [0] * 5 + [1] * 5 + [2] * 2  # passes follow each other


# ---------------------------------------------------------------- the loader: batches, no label of the pool read
def ssld_config(root, *extra):
    from util.config import load_config

    return load_config("config/synthetic_cpu/pspnet18_kd_ssld.yaml", [
        f"data.root={root}", "data.names=null", "data.classes=4", "train.batch_size=4", "train.crop_size=65",
        "train.workers=0", *extra])


def test_batches_hold_labelled_then_unlabelled_and_no_pool_label_is_opened(pool_set, monkeypatch):
    """The pool's would-be label files exist (written here, where the generator never writes them) and are never
    opened: every path given to open() and to PIL's Image.open while the loader runs an epoch is recorded."""
    import builtins

    import data.dataset
    from engine.setup import build_data
    from tools.synthetic_cpu import render_cpu
    from util.config import UNLABELED_LABEL
    from util.distributed import DistInfo

    would_be = []
    for i in range(5):
        path = os.path.join(pool_set, "SegmentationClassAug", f"unlabeled_{i:06d}.png")
        Image.fromarray(render_cpu(0, 2, i, 4)[1]).save(path)
        would_be.append(os.path.abspath(path))
    opened = []
    real_open, real_image_open = builtins.open, data.dataset.Image.open

    def spy_open(file, *args, **kwargs):
        opened.append(os.path.abspath(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else file)
        return real_open(file, *args, **kwargs)

    def spy_image_open(fp, *args, **kwargs):
        opened.append(os.path.abspath(os.fspath(fp)) if isinstance(fp, (str, os.PathLike)) else fp)
        return real_image_open(fp, *args, **kwargs)

    try:
        monkeypatch.setattr(builtins, "open", spy_open)
        monkeypatch.setattr(data.dataset.Image, "open", spy_image_open)
        cfg = ssld_config(pool_set)
        loader, sampler = build_data(cfg, DistInfo(0, 0, 1, torch.device("cpu")))
        sampler.set_epoch(0)
        batches = list(loader)
    finally:
        for path in would_be:
            os.remove(path)
    assert len(batches) == 3 and loader.batch_size == 4  # 6 labelled images, 2 a batch
    for images, target in batches:
        assert images.shape == (4, 3, 65, 65)
        assert (target[:2] < 4).any() and not (target[:2] == UNLABELED_LABEL).any()
        assert set(target[2:].unique().tolist()) <= {UNLABELED_LABEL, IGNORE}
    assert not set(would_be) & set(opened)
    pool_images = [os.path.join(os.path.abspath(pool_set), f"JPEGImages/unlabeled_{i:06d}.jpg") for i in range(5)]
    assert set(pool_images) & set(opened)  # the pool's images were read (6 of them: 3 batches x 2)


def test_unlabelled_rounding_and_loader_sizes(pool_set):
    from engine.setup import build_data
    from util.config import unlabeled_per_process
    from util.distributed import DistInfo
    from util.errors import SegKDError

    assert [unlabeled_per_process(r, n) for r, n in ((0.5, 8), (0.3, 8), (0.25, 2), (0.75, 2), (0.1, 4))] == \
        [4, 2, 1, 2, 0]
    with pytest.raises(SegKDError, match="train_aug.txt: 6 samples cannot fill one batch.*1 of each process's 8"):
        build_data(ssld_config(pool_set, "train.batch_size=8", "data.unlabeled_ratio=0.1"),
                   DistInfo(0, 0, 1, torch.device("cpu")))


# ---------------------------------------------------------------- the distiller: CE on the labelled part only
class Segmentor(torch.nn.Module):
    def __init__(self, seed, classes=4):
        super().__init__()
        torch.manual_seed(seed)
        self.classes = classes
        self.conv = torch.nn.Conv2d(3, 2 * classes, 8, stride=8)

    def forward(self, x):
        out, aux = self.conv(x).split(self.classes, dim=1)
        return {"out": out, "aux": aux}


def test_ce_sees_labelled_images_only_and_kd_every_unpadded_pixel():
    from model.distiller import Distiller
    from model.losses import cross_entropy
    from util.config import UNLABELED_LABEL

    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 33, 33, generator=g)
    target = torch.randint(0, 4, (4, 33, 33), generator=g)
    target[0, :5] = IGNORE
    target[2:] = UNLABELED_LABEL
    target[3, :, 20:] = IGNORE  # an unlabelled image's crop padding
    student, teacher = Segmentor(0), Segmentor(1)
    d = Distiller(student, teacher, kd_loss="sym_kl", feat_loss="kl", unlabeled_label=UNLABELED_LABEL)
    _, terms = d(images, target)
    s, t = student(images), teacher(images)
    assert terms["ce"].item() == pytest.approx(cross_entropy(s["out"][:2], target[:2]).item(), rel=1e-6)
    assert terms["aux"].item() == pytest.approx(cross_entropy(s["aux"][:2], target[:2]).item(), rel=1e-6)
    kd_target = target.clone()
    kd_target[kd_target == UNLABELED_LABEL] = 0  # any class: what counts is "not ignore"
    assert terms["kd"].item() == pytest.approx(sym_kl_loss(s["out"], t["out"], kd_target).item(), rel=1e-6)
    assert terms["feat"].item() == pytest.approx(kd_kl_loss(s["aux"], t["aux"], kd_target).item(), rel=1e-6)


# ---------------------------------------------------------------- refused before anything is written
@pytest.mark.parametrize("overrides, message", [
    (["data.unlabeled_list=null", "data.unlabeled_ratio=0.5"], "data.unlabeled_ratio=0.5: data.unlabeled_list is not"),
    (["data.unlabeled_ratio=0.0"], "data.unlabeled_ratio=0.0: must be in (0, 1) with data.unlabeled_list="),
    (["data.unlabeled_ratio=0.1"], "gives 0 unlabelled and 4 labelled"),
    (["data.unlabeled_ratio=0.9"], "gives 4 unlabelled and 0 labelled"),
    (["teacher.checkpoint=null"], "data.unlabeled_list=list/unlabeled.txt needs teacher.checkpoint"),
    (["teacher.checkpoint=null", "mutual.peers=[18]"], "and mutual.peers are both set"),
    (["data.classes=255"], "label 254, which data.classes=255"),
    (["data.ignore_label=254"], "data.ignore_label=254 already uses"),
])
def test_check_training_refuses(overrides, message):
    from util.config import check_training
    from util.errors import SegKDError

    cfg = ssld_config("somewhere", "output.dir=runs/x", *overrides)
    with pytest.raises(SegKDError) as e:
        check_training(cfg, 1, False, "cpu")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_ratio_above_one_is_refused_at_load():
    from util.errors import SegKDError

    with pytest.raises(SegKDError, match=r"data.unlabeled_ratio=1.0: must be in \[0, 1\)"):
        ssld_config("somewhere", "data.unlabeled_ratio=1.0")


@pytest.mark.parametrize("method", ["ifvd", "dkd"])
def test_label_using_methods_are_refused_with_unlabelled_images(method):
    from model.distiller import build_terms
    from model.methods import METHODS
    from model.pspnet import build_pspnet
    from util.errors import SegKDError

    assert sorted(n for n, c in METHODS.items() if c.uses_labels) == ["dkd", "ifvd"]
    net = build_pspnet(18, 4)
    with pytest.raises(SegKDError) as e:
        build_terms(ssld_config("somewhere", f"distill.terms=[at,{method}]"), net, net)
    text = str(e.value)
    assert f"distill.terms: {method} uses" in text and "data.unlabeled_list=list/unlabeled.txt" in text
    assert "at," in text  # names the label-free ones
    assert len(build_terms(ssld_config("somewhere", "distill.terms=[at,sphere]"), net, net)) == 2
    assert len(build_terms(ssld_config("somewhere", f"distill.terms=[{method}]", "data.unlabeled_list=null",
                                       "data.unlabeled_ratio=0.0"), net, net)) == 1


@pytest.fixture(scope="module")
def r18_teacher(tmp_path_factory):
    from model.build import checkpoint_meta
    from model.pspnet import build_pspnet
    from util.checkpoint import save_checkpoint
    from util.config import load_config

    cfg = load_config("config/synthetic/pspnet50_teacher.yaml", ["data.classes=4", "model.layers=18"])
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("teacher") / "final.pth")
    save_checkpoint({**checkpoint_meta(cfg.model, cfg, "supervised"), "model": build_pspnet(18, 4).state_dict()},
                    path)
    return path


@pytest.mark.parametrize("case", ["empty", "pair", "missing", "ratio", "ifvd"])
def test_train_refuses_in_one_line_before_the_run_directory(case, pool_set, r18_teacher, tmp_path):
    from tests.test_bad_inputs import run_in_process

    lists = {"empty": "", "pair": "JPEGImages/unlabeled_000000.jpg SegmentationClassAug/train_000000.png\n"}
    extra, culprit = [], "data.unlabeled_list"
    if case in lists:
        (tmp_path / "pool.txt").write_text(lists[case])
        extra = [f"data.unlabeled_list={tmp_path / 'pool.txt'}"]
    elif case == "missing":
        extra = ["data.unlabeled_list=list/none.txt"]
    elif case == "ratio":
        extra, culprit = ["data.unlabeled_ratio=0"], "data.unlabeled_ratio"
    else:
        extra, culprit = ["distill.terms=[ifvd]"], "distill.terms: ifvd"
    run_dir = tmp_path / "run"
    r = run_in_process(["--config", "config/synthetic_cpu/pspnet18_kd_ssld.yaml", f"data.root={pool_set}",
                        "data.names=null", "data.classes=4", "train.batch_size=4", "train.crop_size=33",
                        "train.workers=0", f"teacher.checkpoint={r18_teacher}", "teacher.layers=18",
                        f"output.dir={run_dir}", *extra])
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and culprit in r.stderr, r.stderr
    assert not run_dir.exists()
