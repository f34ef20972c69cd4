"""distill.terms: the registry against config/defaults.yaml, the segmentor's named tensors, what the teacher
computes, how terms are weighted and logged, the connectors' optimizer group, and the one-line errors."""

import importlib
import importlib.util
import os
import sys

import pytest
import torch
import yaml

from engine.setup import build_optimizer
from model.distiller import Distiller, build_terms
from model.methods import FEATURES, METHODS, TENSORS, tensor_names
from model.pspnet import build_pspnet
from util.config import DEFAULTS_PATH, load_config
from util.errors import SegKDError

KD = "config/synthetic_cpu/pspnet18_kd.yaml"
K = 5


SHIPPED = {"fitnet", "at", "skd", "ifvd", "cirkd", "dkd", "sphere", "rkd", "afd"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table_stats():
    """scripts/table_stats.py, as scripts/make_table.py imports it (from its own folder)."""
    if "table_stats" not in sys.modules:
        spec = importlib.util.spec_from_file_location("make_table", os.path.join(REPO, "scripts", "make_table.py"))
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return sys.modules["table_stats"]


def test_every_registered_method_has_its_file_its_paper_and_its_defaults_block():
    with open(DEFAULTS_PATH) as f:
        distill = yaml.safe_load(f)["distill"]
    sections = {k for k, v in distill.items() if isinstance(v, dict)}
    gone = SHIPPED - set(METHODS)
    assert not gone, f"no longer registered (the imports of model/methods/__init__.py): {sorted(gone)}"
    assert sections == set(METHODS), (
        f"registered without a distill.<name> block in config/defaults.yaml: {sorted(set(METHODS) - sections)}; "
        f"a block without a registered method (its file, imported in model/methods/__init__.py): "
        f"{sorted(sections - set(METHODS))}")
    for name, cls in METHODS.items():
        assert cls.__module__ == f"model.methods.{name}"  # one file per method
        assert cls.paper and cls.paper.split()[0] in importlib.import_module(cls.__module__).__doc__
        declared = {"weight": cls.default_weight, "tensor": cls.default_tensor,
                    **{k: p.default for k, p in cls.params.items()}}
        assert distill[name] == declared, name
        assert set(tensor_names(cls.default_tensor)) <= set(TENSORS)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return build_pspnet(18, K), build_pspnet(50, K)


def test_named_tensors_change_nothing_and_have_the_declared_channels(nets):
    student, _ = nets
    x = torch.randn(2, 3, 65, 65)
    student.train()
    torch.manual_seed(3)
    plain = student(x)
    torch.manual_seed(3)  # the same dropout draws
    named = student(x, features=FEATURES)
    assert set(named) == {"out", "aux", *FEATURES}
    assert torch.equal(plain["out"], named["out"]) and torch.equal(plain["aux"], named["aux"])
    for name in FEATURES:
        assert named[name].shape[:2] == (2, student.feature_channels[name]), name
    assert named["layer1"].shape[-1] == 17 and named["layer4"].shape[-1] == named["out"].shape[-1] == 9
    assert student.feature_channels["out_feat"] == 512 and student.feature_channels["aux_feat"] == 256
    with pytest.raises(ValueError, match="layer9"):
        student(x, features=("layer9",))


class Recorder(torch.nn.Module):
    """The teacher, recording the ``features`` of each call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    @property
    def feature_channels(self):
        return self.net.feature_channels

    def forward(self, x, features=None):
        self.calls.append(features)
        return self.net(x) if features is None else self.net(x, features=features)


def batch():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, 33, 33, generator=g), torch.randint(0, K, (2, 33, 33), generator=g)
    y[:, :5] = 255
    return x, y


def distiller(nets, *overrides):
    cfg = load_config(KD, [f"data.classes={K}", *overrides])
    student, teacher = nets
    teacher = Recorder(teacher)
    return Distiller.from_config(student, teacher, cfg).train(), teacher


def test_one_method_name_on_the_command_line_is_a_list_of_one():
    assert load_config(KD, ["distill.terms=fitnet"]).distill.terms == ["fitnet"]
    assert load_config(KD, ["distill.terms=[fitnet,dkd]"]).distill.terms == ["fitnet", "dkd"]
    assert load_config(KD).distill.terms == []


def test_the_teacher_computes_only_the_tensors_the_terms_name(nets):
    d, teacher = distiller(nets)
    d(*batch())
    assert teacher.calls == [None] and d.features == ()  # logits only, as before distill.terms
    d, teacher = distiller(nets, "distill.terms=[fitnet,at,dkd]", "distill.fitnet.tensor=layer4")
    d(*batch())
    assert teacher.calls == [("layer4", "out_feat")]  # dkd compares logits: nothing more


def test_each_term_is_its_method_on_its_tensor_times_its_weight(nets):
    d, _ = distiller(nets, "distill.terms=[fitnet,at,dkd]", "distill.fitnet.tensor=layer4", "distill.fitnet.weight=3",
                     "distill.at.weight=700", "distill.dkd.weight=0.25", "distill.dkd.beta=2")
    x, y = batch()
    torch.manual_seed(5)
    total, terms = d(x, y)
    assert list(terms) == ["ce", "aux", "kd", "fitnet", "at", "dkd"]
    torch.manual_seed(5)
    s = d.student(x, features=("layer4", "out_feat"))
    with torch.no_grad():
        t = d.teacher.net(x, features=("layer4", "out_feat"))
    assert d.methods["dkd"].beta == 2.0
    for name, tensor in (("fitnet", "layer4"), ("at", "out_feat"), ("dkd", "out")):
        assert torch.equal(terms[name], d.methods[name](s[tensor], t[tensor], y).detach()), name
    weights = {"ce": 1.0, "aux": 0.4, "kd": 1.0, "fitnet": 3.0, "at": 700.0, "dkd": 0.25}
    assert torch.allclose(total, sum(weights[n] * v for n, v in terms.items()), rtol=1e-6)


def test_a_method_of_several_tensors_gets_one_list_per_network(nets):
    # afd names the four stages: the teacher computes their union with the other terms' tensors, the method gets
    # the tensors in the order of its names, built with one channel count per name
    d, teacher = distiller(nets, "distill.terms=[afd,at]", "distill.afd.tensor=[layer4,layer1]")
    x, y = batch()
    torch.manual_seed(5)
    _, terms = d(x, y)
    assert teacher.calls == [("layer1", "layer4", "out_feat")]
    assert d.term_tensors["afd"] == ("layer4", "layer1")
    afd = d.methods["afd"]
    assert [layer[0].in_features for layer in afd.attention.key] == [512, 64]  # R18's layer4, layer1
    assert [layer[0].in_features for layer in afd.attention.query] == [2048, 256]  # R50's
    torch.manual_seed(5)
    s = d.student(x, features=("layer1", "layer4", "out_feat"))
    with torch.no_grad():
        t = d.teacher.net(x, features=("layer1", "layer4", "out_feat"))
    want = afd([s["layer4"], s["layer1"]], [t["layer4"], t["layer1"]], y)
    assert torch.allclose(terms["afd"], want.detach(), rtol=1e-6)


def test_connectors_train_in_their_own_group_and_get_gradients(nets):
    student, teacher = build_pspnet(18, K), nets[1]
    cfg = load_config(KD, [f"data.classes={K}", "distill.terms=[fitnet,at]", "distill.fitnet.tensor=layer4"])
    d = Distiller.from_config(student, teacher, cfg).train()
    connector = d.trainable_parameters()
    assert connector and all(id(p) not in {id(q) for q in student.parameters()} for p in connector)
    assert d.methods["fitnet"].connector[0].weight.shape == (2048, 512, 1, 1)  # R18 layer4 -> R50 layer4
    opt = build_optimizer(student, cfg, connector)
    assert len(opt.param_groups) == 3
    assert opt.param_groups[2]["params"] == connector
    assert opt.param_groups[2]["lr"] == cfg.train.base_lr * cfg.train.head_lr_mult
    before = [p.detach().clone() for p in connector]
    total, _ = d(*batch())
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in connector)
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, connector))
    assert not any(k.startswith("fitnet") or "connector" in k for k in student.state_dict())
    assert len(build_optimizer(student, load_config(KD, [f"data.classes={K}"])).param_groups) == 2


@pytest.mark.parametrize("overrides, message", [
    (["distill.terms=[nope]"], f"distill.terms: unknown method 'nope'; known: {', '.join(sorted(METHODS))}"),
    (["distill.terms=[at,at]"], "distill.terms names at more than once"),
    (["distill.terms=[at]", "distill.at.tensor=layer9"], "distill.at.tensor='layer9': must be one of layer1"),
    (["distill.terms=[dkd]", "distill.dkd.tensor=layer4"], "distill.dkd.tensor='layer4': dkd compares class logits"),
    (["distill.terms=[at]", "distill.at.p=-1"], "distill.at.p=-1.0: must be"),
    (["distill.terms=[skd]", "distill.skd.pool=0"], "distill.skd.pool=0: must be"),
    (["distill.terms=[cirkd]", "distill.cirkd.tau=0"], "distill.cirkd.tau=0.0: must be"),
    (["distill.fitnet.weight=heavy"], "distill.fitnet.weight must be float"),
    (["distill.terms=[afd]", "distill.afd.tensor=[layer1,layer9]"], "distill.afd.tensor='layer9': must be one of"),
    (["distill.terms=[afd]", "distill.afd.tensor=layer4"], "distill.afd.tensor must be list, got 'layer4'"),
    (["distill.terms=[afd]", "distill.afd.tensor=[]"], "distill.afd.tensor=[]: name at least one tensor"),
    (["distill.terms=[afd]", "distill.afd.qk_dim=0"], "distill.afd.qk_dim=0: must be an integer >= 1"),
    (["distill.terms=[sphere]", "distill.sphere.tensor=layer4"], "distill.sphere.tensor='layer4': sphere compares"),
    (["distill.terms=[rkd]", "distill.rkd.grid=1"], "distill.rkd.grid=1: must be an integer >= 2"),
    (["distill.at.tensors=out"], "unknown config key 'distill.at.tensors' (did you mean distill.at.tensor?)"),
])
def test_bad_terms_are_one_line_errors_naming_the_key(nets, overrides, message):
    with pytest.raises(SegKDError) as e:
        cfg = load_config(KD, [f"data.classes={K}", *overrides])
        build_terms(cfg, *nets)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_terms_fail_before_the_run_directory_exists(tiny_data, tmp_path):
    from tests.conftest import tiny_overrides
    from tests.test_bad_inputs import run_in_process

    teacher = tmp_path / "teacher.pth"
    from model.build import checkpoint_meta
    from util.checkpoint import save_checkpoint
    cfg = load_config("config/synthetic/pspnet50_teacher.yaml", ["data.classes=4", "model.layers=18"])
    save_checkpoint({**checkpoint_meta(cfg.model, cfg, "supervised"), "model": build_pspnet(18, 4).state_dict()},
                    str(teacher))
    run_dir = tmp_path / "run"
    r = run_in_process(["--config", "config/synthetic/pspnet18_kd.yaml", *tiny_overrides(tiny_data, str(run_dir)),
                        f"teacher.checkpoint={teacher}", "teacher.layers=18", "distill.terms=[dkd]",
                        "distill.dkd.tensor=out_feat"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: distill.dkd.tensor='out_feat': dkd compares class logits, use out or aux"]
    assert not os.path.exists(run_dir)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_row_has_its_reference_test_config_label_and_section(name):
    """What a registered method needs to be a row of the instrument's tables, as the shipped methods are: each
    missing piece named, so a new method's author reads here what to add (docs/ARCHITECTURE.md, Where to add)."""
    repo, row = REPO, f"pspnet18_kd_{name}"
    with open(os.path.join(repo, "docs", "METHODS.md"), encoding="utf-8") as f:
        methods_md = f.read()
    missing = [what for what, ok in (
        (f"tests/test_method_{name}.py (its NumPy reference)", os.path.isfile(os.path.join(repo, "tests",
                                                                                          f"test_method_{name}.py"))),
        (f"config/synthetic_cpu/{row}.yaml", os.path.isfile(os.path.join(repo, "config", "synthetic_cpu",
                                                                         f"{row}.yaml"))),
        (f"a row label for {row} in scripts/table_stats.py (EXTRA_ROWS)",
         row in {r for r, _, _ in table_stats().EXTRA_ROWS}),
        (f"`{name}` in docs/METHODS.md", f"`{name}`" in methods_md or f"[{name}]" in methods_md),
    ) if not ok]
    assert missing == [], f"method {name!r} lacks: " + "; ".join(missing)
    config = load_config(os.path.join(repo, "config", "synthetic_cpu", f"{row}.yaml"))
    assert list(config.distill.terms) == [name]


def test_a_row_named_after_a_new_method_is_labelled_as_the_shipped_ones():
    unlabelled_row = table_stats().unlabelled_row
    assert unlabelled_row("pspnet18_kd_mse", ("distill", 18, "none", ("mse",))) == "R18 + logit KD + mse"
    assert unlabelled_row("my_row", ("distill", 18, "none", ("mse",))) == "my_row (distill R18, feat_loss none, " \
        "distill.terms [mse])"
    assert unlabelled_row("pspnet18_kd_mse", ("distill", 18, "kl", ("mse",))).startswith("pspnet18_kd_mse (")



def test_a_method_file_without_its_defaults_block_is_named_as_such(monkeypatch, tmp_path):
    """A new method's file without its block in config/defaults.yaml: the error says what is missing, not that the
    method is unknown (util.config looks for the file: the config floor imports no model code)."""
    import util.config

    (tmp_path / "model" / "methods").mkdir(parents=True)
    (tmp_path / "model" / "methods" / "mse_new.py").write_text('"""A new method."""\n')
    monkeypatch.setattr(util.config, "REPO_ROOT", str(tmp_path))
    with pytest.raises(SegKDError, match=r"pspnet18_kd.yaml: distill.terms: model/methods/mse_new.py exists but "
                                         r"config/defaults.yaml has no distill.mse_new block"):
        load_config(os.path.join(REPO, KD), ["distill.terms=[mse_new]"])
    with pytest.raises(SegKDError, match=r"unknown method 'mse_other'; known: "):
        load_config(os.path.join(REPO, KD), ["distill.terms=[mse_other]"])
    monkeypatch.undo()  # the repository's own model/methods: base.py and __init__.py are not methods
    for name in ("base", "__init__"):
        with pytest.raises(SegKDError, match=rf"unknown method '{name}'; known: "):
            load_config(os.path.join(REPO, KD), [f"distill.terms=[{name}]"])
