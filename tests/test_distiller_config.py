"""Distiller.from_config hands every config key to the loss it belongs to: every distill.* key and the CE weights
set to distinct values off their defaults, each logged term and the total compared with direct calls of the
functions of model/losses.py (by keyword), for every kd_loss and feat_loss choice, at 1/8 and at full resolution.
A key passed to the wrong parameter, or not passed at all, changes a term (the last test holds that for these
values)."""

import itertools

import pytest
import torch
from torch import nn

from model.distiller import Distiller
from model.losses import (
    cross_entropy,
    cwd_loss,
    dist_loss,
    kd_kl_loss,
    kl_std_loss,
    smooth_l1_logits_loss,
    sym_kl_loss,
)
from util.config import Config, load_config

CONFIG = "config/synthetic/pspnet18_kd.yaml"
CLASSES = 3
IGNORE = 250
VALUES = {  # none of them is its default (config/defaults.yaml), no two are equal
    "distill.kd_weight": 1.7,
    "distill.temperature": 2.5,
    "distill.feat_weight": 0.55,
    "distill.smoothl1_beta": 0.3,
    "distill.cwd_tau": 3.5,
    "distill.dist_beta": 0.65,
    "distill.dist_gamma": 1.45,
    "train.ce_weight": 0.8,
    "train.aux_weight": 0.35,
}
KD_LOSSES = ("kl", "dist", "kl_std", "sym_kl")
FEAT_LOSSES = ("none", "kl", "smoothl1", "cwd", "dist", "kl_std", "sym_kl")


def term(loss, student, teacher, target, full, v):
    """The loss named ``loss`` called directly with the parameters of ``v``, every argument by keyword."""
    common = {"target": target, "ignore_index": IGNORE, "full_resolution": full}
    if loss == "kl":
        return kd_kl_loss(student, teacher, temperature=v["distill.temperature"], **common)
    if loss == "kl_std":
        return kl_std_loss(student, teacher, temperature=v["distill.temperature"], **common)
    if loss == "sym_kl":
        return sym_kl_loss(student, teacher, temperature=v["distill.temperature"], **common)
    if loss == "smoothl1":
        return smooth_l1_logits_loss(student, teacher, beta=v["distill.smoothl1_beta"], **common)
    if loss == "cwd":
        return cwd_loss(student, teacher, tau=v["distill.cwd_tau"], **common)
    assert loss == "dist"
    return dist_loss(student, teacher, beta=v["distill.dist_beta"], gamma=v["distill.dist_gamma"], **common)


def expected(kd, feat, full, s, t, target, v=VALUES):
    """{term: value} and the total, from the logits of the student ``s`` and the teacher ``t``."""
    terms = {"ce": cross_entropy(s["out"], target, ignore_index=IGNORE),
             "aux": cross_entropy(s["aux"], target, ignore_index=IGNORE),
             "kd": term(kd, s["out"], t["out"], target, full, v)}
    weights = {"ce": v["train.ce_weight"], "aux": v["train.aux_weight"], "kd": v["distill.kd_weight"],
               "feat": v["distill.feat_weight"]}
    if feat != "none":
        terms["feat"] = term(feat, s["aux"], t["aux"], target, full, v)
    terms = {k: x.item() for k, x in terms.items()}
    return terms, sum(weights[k] * x for k, x in terms.items())


class Segmentor(nn.Module):
    """The distiller's view of a network: images -> {"out", "aux"} logits at 1/8 resolution (one conv here)."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 2 * CLASSES, 8, stride=8)

    def forward(self, x):
        out, aux = self.conv(x).split(CLASSES, dim=1)
        return {"out": out, "aux": aux}


@pytest.fixture(scope="module")
def nets():
    """Student and teacher (different weights), a batch with ignored pixels, and their logits."""
    student, teacher = Segmentor(0), Segmentor(1)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 33, 33, generator=g)
    target = torch.randint(0, CLASSES, (2, 33, 33), generator=g)
    target[0, :9] = IGNORE
    target[1, :, 20:] = IGNORE
    with torch.no_grad():
        s, t = student(images), teacher(images)
    return student, teacher, images, target, s, t


def get(cfg, key):
    section, name = key.split(".")
    return cfg[section][name]


@pytest.fixture(scope="module")
def base():
    """The config with VALUES, loaded (and checked) once; each case sets its three choices on a copy."""
    overrides = [f"{k}={v}" for k, v in VALUES.items()]
    return load_config(CONFIG, [f"data.classes={CLASSES}", f"data.ignore_label={IGNORE}", *overrides]).to_dict()


def config(base, kd, feat, full):
    tree = {**base, "distill": {**base["distill"], "kd_loss": kd, "feat_loss": feat, "full_resolution": full}}
    return Config(tree)


def test_the_choices_are_the_configs():
    """The parametrisation covers every choice the config accepts (util/config.py)."""
    from util.config import CHOICES

    assert CHOICES["distill.kd_loss"] == KD_LOSSES and CHOICES["distill.feat_loss"] == FEAT_LOSSES


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("feat", FEAT_LOSSES)
@pytest.mark.parametrize("kd", KD_LOSSES)
def test_from_config_gives_each_term_its_keys(nets, base, kd, feat, full):
    student, teacher, images, target, s, t = nets
    cfg = config(base, kd, feat, full)
    assert all(get(cfg, k) == v for k, v in VALUES.items())
    d = Distiller.from_config(student, teacher, cfg)
    total, terms = d(images, target)
    want, want_total = expected(kd, feat, full, s, t, target)
    assert set(terms) == set(want)
    for name, value in want.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert total.item() == pytest.approx(want_total, rel=1e-6)


def test_these_values_tell_every_key_apart(nets):
    """What makes the test above able to fail: for each pair of keys, swapping their values changes some term
    or total of some parametrisation, and so does leaving any one key at its default."""
    _, _, _, target, s, t = nets
    cases = list(itertools.product(KD_LOSSES, FEAT_LOSSES, (False, True)))
    results = {}

    def outcome(case, v):
        key = (case, tuple(sorted(v.items())))
        if key not in results:
            results[key] = expected(*case, s, t, target, v)
        return results[key]

    def differs(v):
        for case in cases:
            (a, total_a), (b, total_b) = outcome(case, VALUES), outcome(case, v)
            if total_a != pytest.approx(total_b, rel=1e-4) or any(a[k] != pytest.approx(b[k], rel=1e-4) for k in a):
                return True
        return False

    defaults = load_config(None)
    for k in VALUES:
        assert get(defaults, k) != VALUES[k] and differs({**VALUES, k: get(defaults, k)}), f"{k} at its default"
    for a, b in itertools.combinations(VALUES, 2):
        assert differs({**VALUES, a: VALUES[b], b: VALUES[a]}), f"{a} swapped with {b}"
    # and distill.full_resolution changes every loss
    for loss in ("kl", "kl_std", "smoothl1", "cwd", "dist"):
        at_8, full = (term(loss, s["aux"], t["aux"], target, f, VALUES).item() for f in (False, True))
        assert at_8 != pytest.approx(full, rel=1e-3), loss
