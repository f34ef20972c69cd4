"""The distiller: loss composition, the teacher's aux logits as the FEAT target, a really frozen teacher."""

import copy

import pytest
import torch

from model.distiller import Distiller
from model.losses import cross_entropy, kd_kl_loss, smooth_l1_logits_loss
from model.pspnet import build_pspnet


def models(classes=4):
    torch.manual_seed(0)
    return build_pspnet(18, classes), build_pspnet(18, classes)  # depth is irrelevant to the loss logic


def batch(classes=4):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 33, 33, generator=g)
    target = torch.randint(0, classes, (2, 33, 33), generator=g)
    target[:, :4] = 255
    return images, target


@pytest.mark.parametrize("feat", ["none", "kl", "smoothl1"])
def test_total_is_the_weighted_sum_with_teacher_aux_target(feat):
    student, teacher = models()
    d = Distiller(student, teacher, ce_weight=1.0, aux_weight=0.4, kd_weight=2.0, temperature=3.0,
                  feat_loss=feat, feat_weight=0.7).eval()
    images, target = batch()
    total, terms = d(images, target)
    s, t = student(images), teacher(images)
    expected = {"ce": cross_entropy(s["out"], target), "aux": cross_entropy(s["aux"], target),
                "kd": kd_kl_loss(s["out"], t["out"], target, 3.0)}
    if feat == "kl":
        expected["feat"] = kd_kl_loss(s["aux"], t["aux"], target, 3.0)
    elif feat == "smoothl1":
        expected["feat"] = smooth_l1_logits_loss(s["aux"], t["aux"], target)
    assert set(terms) == set(expected)
    for k, v in expected.items():
        assert terms[k].item() == pytest.approx(v.item(), rel=1e-5), k
    weights = {"ce": 1.0, "aux": 0.4, "kd": 2.0, "feat": 0.7}
    assert total.item() == pytest.approx(sum(weights[k] * v.item() for k, v in expected.items()), rel=1e-5)
    if feat != "none":  # the aux target is the teacher's aux head, not its main output
        wrong = kd_kl_loss(s["aux"], t["out"], target, 3.0) if feat == "kl" else \
            smooth_l1_logits_loss(s["aux"], t["out"], target)
        assert terms["feat"].item() != pytest.approx(wrong.item(), rel=1e-3)


def test_supervised_has_ce_and_aux_only():
    student, _ = models()
    total, terms = Distiller(student, None, aux_weight=0.4)(*batch())
    assert set(terms) == {"ce", "aux"}
    assert total.item() == pytest.approx(terms["ce"].item() + 0.4 * terms["aux"].item(), rel=1e-6)


def test_teacher_frozen_after_training_steps():
    student, teacher = models()
    d = Distiller(student, teacher, feat_loss="kl")
    before = copy.deepcopy(teacher.state_dict())
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.1)
    d.train()
    assert d.student.training and not d.teacher.training
    student_before = copy.deepcopy(student.state_dict())
    for _ in range(2):
        total, _ = d(*batch())
        opt.zero_grad()
        total.backward()
        opt.step()
    for k, v in teacher.state_dict().items():  # weights and BN running stats and counters
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not d.teacher.training
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())
