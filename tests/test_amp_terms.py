"""Every distillation term runs in float32 under AMP (model/distiller.py:float32_term): under CPU autocast (bfloat16,
and float16, which this CPU runs too) each term's value equals its float32 value within 1e-5 relative, and IFVD at
the float16 overflow of issue 41 (a channel averaging 40 over 2025 pixels of one class) is finite."""

import pytest
import torch
from torch import nn

from model.distiller import KD_LOSSES, Distiller, Term, float32_term
from model.methods import METHODS
from model.methods.ifvd import ifvd_loss
from model.mutual import MutualLearner

CLASSES, N, H = 4, 2, 12  # logits and features at 12x12, labels at 96x96 (1/8)
CHANNELS = {"student": 16, "teacher": 32}
FEATURE = "out_feat"
DTYPES = [torch.bfloat16, torch.float16]


class Fixed(nn.Module):
    """A stand-in network returning fixed float32 tensors (so autocast cannot change them): the terms alone differ."""

    def __init__(self, outs: dict[str, torch.Tensor]):
        super().__init__()
        self.outs = outs
        self.scale = nn.Parameter(torch.ones(()))  # a graph for the student's terms

    def forward(self, images, features=()):
        return {k: v * self.scale for k, v in self.outs.items()}


def networks(seed: int = 0, noise: float = 0.03):
    """Student near the teacher (``noise``), where low-precision rounding is largest relative to the term."""
    g = torch.Generator().manual_seed(seed)
    t_logits = {k: torch.randn(N, CLASSES, H, H, generator=g) * 3 for k in ("out", "aux")}
    s_logits = {k: v + noise * torch.randn(v.shape, generator=g) for k, v in t_logits.items()}
    shared = torch.relu(torch.randn(N, CHANNELS["student"], H, H, generator=g)) * 4
    t_feat = torch.cat([shared, torch.relu(torch.randn(N, CHANNELS["teacher"] - CHANNELS["student"], H, H,
                                                        generator=g))], dim=1)
    s_feat = torch.relu(shared + noise * torch.randn(shared.shape, generator=g))
    target = torch.randint(0, CLASSES, (N, 8 * H, 8 * H), generator=g)
    target[:, :8] = 255
    return Fixed({**s_logits, FEATURE: s_feat}), Fixed({**t_logits, FEATURE: t_feat}), target


def distiller(kd_loss: str = "kl", feat_loss: str = "none", method: str = "") -> Distiller:
    student, teacher, _ = networks()
    terms = []
    if method:
        cls = METHODS[method]
        tensor = cls.default_tensor if cls.logits_only else FEATURE
        cs = CLASSES if cls.logits_only else CHANNELS["student"]
        ct = CLASSES if cls.logits_only else CHANNELS["teacher"]
        if cls.same_channels:
            cs = ct = CLASSES if cls.logits_only else CHANNELS["student"]
        if cls.several_tensors:  # afd compares a list of tensors: here the feature twice
            tensor, cs, ct = (FEATURE, FEATURE), [cs, cs], [ct, ct]
        terms = [Term(method, cls(cs, ct, CLASSES), tensor, 1.0)]
    if terms and METHODS[method].same_channels and not METHODS[method].logits_only:
        teacher.outs[FEATURE] = teacher.outs[FEATURE][:, :CHANNELS["student"]]
    return Distiller(student, teacher, kd_loss=kd_loss, feat_loss=feat_loss, terms=terms)


def terms_under(model: nn.Module, target: torch.Tensor, dtype=None) -> dict[str, torch.Tensor]:
    images = torch.zeros(N, 3, 8 * H, 8 * H)
    torch.manual_seed(0)
    if dtype is None:
        return model(images, target)[1]
    with torch.autocast("cpu", dtype=dtype):
        return model(images, target)[1]


def assert_float32_values(model: nn.Module, names: list[str], dtype) -> None:
    _, _, target = networks()
    reference = terms_under(model, target)
    amp = terms_under(model, target, dtype)
    for name in names:
        assert amp[name].dtype == torch.float32, name
        assert torch.allclose(amp[name], reference[name], rtol=1e-5, atol=0), (name, amp[name], reference[name])


CASES = ([("kd", {"kd_loss": k}) for k in KD_LOSSES]
         + [("feat", {"feat_loss": f}) for f in ("kl", "smoothl1", "cwd", "dist", "kl_std")]
         + [(m, {"method": m}) for m in sorted(METHODS)])


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{next(iter(k.values()))}" for n, k in CASES])
def test_every_term_under_autocast_equals_its_float32_value(name, kwargs, dtype):
    assert_float32_values(distiller(**kwargs), [name], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("feat_loss", ["none", "cwd", "dist"])
def test_mutual_learning_terms_under_autocast_equal_their_float32_values(feat_loss, dtype):
    peer0, peer1, _ = networks()
    for p in (peer0, peer1):
        del p.outs[FEATURE]
    mutual = MutualLearner([peer0, peer1], feat_loss=feat_loss)
    assert_float32_values(mutual, ["dml"] + (["feat"] if feat_loss != "none" else []), dtype)


@pytest.mark.parametrize("method", ["skd", "cirkd", "ifvd"])
def test_the_matmul_methods_called_raw_under_bf16_autocast_do_differ(method):
    """The precondition the test above guards: their matmuls, called outside float32_term, run in bfloat16 and
    miss the float32 value by far more than 1e-5 (so a distiller without float32_term fails that test)."""
    model = distiller(method=method)
    student, teacher, target = model.student.outs, model.teacher.outs, networks()[2]
    term = model.methods[method]
    exact = term(student[FEATURE], teacher[FEATURE], target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = term(student[FEATURE], teacher[FEATURE], target)
        fixed = float32_term(term, student[FEATURE], teacher[FEATURE], target)
    assert not torch.allclose(raw.float(), exact, rtol=1e-5, atol=0)
    assert torch.allclose(fixed, exact, rtol=1e-5, atol=0)


def test_ifvd_at_the_float16_overflow_is_finite_through_the_distiller():
    """Issue 41: one class over all 45x45 = 2025 pixels, a channel averaging 40: its per-class sum (81000) overflows
    float16's 65504, so IFVD's matmul under float16 autocast gives NaN; through the distiller it is float32's."""
    g = torch.Generator().manual_seed(0)
    feat = torch.full((1, 4, 45, 45), 40.0) + torch.randn(1, 4, 45, 45, generator=g)
    student = Fixed({"out": torch.zeros(1, CLASSES, 45, 45), "aux": torch.zeros(1, CLASSES, 45, 45),
                     FEATURE: feat + 0.5 * torch.randn(feat.shape, generator=g)})
    teacher = Fixed({"out": torch.zeros(1, CLASSES, 45, 45), "aux": torch.zeros(1, CLASSES, 45, 45), FEATURE: feat})
    target = torch.zeros(1, 360, 360, dtype=torch.long)
    model = Distiller(student, teacher, terms=[Term("ifvd", METHODS["ifvd"](4, 4, CLASSES), FEATURE, 20.0)])
    with torch.autocast("cpu", dtype=torch.float16):
        raw = ifvd_loss(student.outs[FEATURE], teacher.outs[FEATURE], target, CLASSES)
        total, terms = model(torch.zeros(1, 3, 360, 360), target)
    assert not torch.isfinite(raw)  # the overflow is real on this CPU
    exact = model(torch.zeros(1, 3, 360, 360), target)[1]["ifvd"]
    assert torch.isfinite(terms["ifvd"]) and torch.isfinite(total)
    assert torch.allclose(terms["ifvd"], exact, rtol=1e-5, atol=0) and exact > 0
