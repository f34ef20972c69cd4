"""Deep mutual learning (model/mutual.py) and teacher-assistant chains, in-process: each peer's gradient holds the
KL to the other's detached prediction and nothing of the other's loss, the KL is zero between identical copies,
the optimizer's groups, the checkpoints' meta and who may load them, bad peer configs as one-line errors before
any training, and the chain's and mutual rows of the results table."""

import argparse
import copy

import pytest
import torch

from engine.setup import build_optimizer
from model.build import check_segkd, load_teacher, model_from_checkpoint, peer_meta, run_meta
from model.losses import kd_kl_loss
from model.mutual import MutualLearner
from model.pspnet import build_pspnet
from tests.conftest import TINY_CLASSES, tiny_overrides
from tests.test_make_table import make_table, write_run
from util.checkpoint import save_checkpoint
from util.config import check_training, load_config
from util.errors import SegKDError

DML = "config/synthetic/dml_pspnet18_pspnet18.yaml"
K = TINY_CLASSES


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, K, (2, 33, 33), generator=g)
    target[0, :4] = 255  # some ignored pixels
    return torch.randn(2, 3, 33, 33, generator=g), target


def peers(dropout=0.1):
    torch.manual_seed(0)
    return [build_pspnet(18, K, dropout=dropout), build_pspnet(18, K, dropout=dropout)]


def grads(loss, params):
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


def test_each_peer_learns_from_the_others_detached_prediction():
    learner = MutualLearner(peers(), weight=1.0, temperature=2.0).train()
    images, target = batch()
    outs = [peer(images) for peer in learner.peers]
    terms = [learner.peer_terms(i, outs, target) for i in range(2)]
    p0, p1 = (list(p.parameters()) for p in learner.peers)
    # peer 0's KL: the other's prediction is a constant, so peer 1's parameters get no gradient from it
    assert all(g is None for g in grads(terms[0]["dml"], p1))
    assert any(g is not None and g.abs().sum() > 0 for g in grads(terms[0]["dml"], p0))
    assert terms[0]["dml"] == kd_kl_loss(outs[0]["out"], outs[1]["out"].detach(), target, 2.0)  # T² included
    # the total's gradient for peer 0 is peer 0's own CE + aux + KL, with the KL in it
    total = sum(learner.weights[n] * v for t in terms for n, v in t.items())
    own = terms[0]["ce"] + 0.4 * terms[0]["aux"] + terms[0]["dml"]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads(total, p0), grads(own, p0)))
    without_kl = grads(terms[0]["ce"] + 0.4 * terms[0]["aux"], p0)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads(total, p0), without_kl))


def test_forward_logs_every_peer_and_the_means():
    learner = MutualLearner(peers(), feat_loss="smoothl1").train()
    total, terms = learner(*batch())
    assert set(terms) == {"ce", "aux", "dml", "feat", *(f"peer{i}/{n}" for i in (0, 1) for n in
                                                         ("ce", "aux", "dml", "feat"))}
    assert terms["dml"] == pytest.approx((terms["peer0/dml"] + terms["peer1/dml"]).item() / 2)
    want = sum(w * terms[f"peer{i}/{n}"] for i in (0, 1) for n, w in (("ce", 1), ("aux", 0.4), ("dml", 1),
                                                                        ("feat", 0.4)))
    assert total.item() == pytest.approx(want.item(), rel=1e-6)


def test_the_kl_is_zero_between_identical_copies():
    net = peers(dropout=0.0)[0]  # no dropout: identical copies then compute identical logits, in train mode too
    learner = MutualLearner([net, copy.deepcopy(net)]).train()
    _, terms = learner(*batch())
    assert terms["peer0/dml"].item() == 0.0 and terms["peer1/dml"].item() == 0.0 and terms["dml"].item() == 0.0


def test_the_optimizer_has_each_peers_two_groups():
    cfg = load_config(DML, [f"data.classes={K}", "train.base_lr=0.002", "train.head_lr_mult=5"])
    nets = torch.nn.ModuleList([build_pspnet(18, K), build_pspnet(34, K)])
    groups = build_optimizer(nets, cfg).param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.002, 0.01, 0.002, 0.01])
    for i, net in enumerate(nets):
        backbone, heads = net.param_groups()
        assert [id(p) for p in groups[2 * i]["params"]] == [id(p) for p in backbone]
        assert [id(p) for p in groups[2 * i + 1]["params"]] == [id(p) for p in heads]


def test_the_shipped_mutual_configs():
    for folder in ("voc2012", "synthetic_cpu", "synthetic"):
        for peer in (18, 50):
            cfg = load_config(f"config/{folder}/dml_pspnet{peer}_pspnet18.yaml")
            assert (cfg.model.layers, cfg.mutual.peers, cfg.teacher.checkpoint) == (18, [peer], None)
            meta = run_meta(cfg, False)
            assert meta["mode"] == "mutual" and meta["peers"] == [18, peer]
            assert peer_meta(meta, 1)["layers"] == peer and "peers" not in peer_meta(meta, 1)


def _check(overrides):
    cfg = load_config(DML, [f"data.classes={K}", "data.root=x", "output.dir=y", *overrides])
    check_training(cfg, 1, False, "cpu")


@pytest.mark.parametrize("overrides, message", [
    (["mutual.peers=[18,null]"], "mutual.peers items must be int, got None"),
    (["mutual.peers=[18,'']"], "mutual.peers items must be int, got ''"),
    (["mutual.peers=null"], "mutual.peers cannot be null"),
    (["mutual.peers=[17]"], "mutual.peers=[17]: must be a list of depths out of 18, 34, 50, 101"),
    (["mutual.peers=[18.0]"], "mutual.peers items must be int"),
    (["mutual.peer=[18]"], "unknown config key 'mutual.peer' (did you mean mutual.peers?)"),
    (["mutual.temperature=0"], "mutual.temperature=0: must be positive"),
    (["mutual.feat_loss=l2"], "mutual.feat_loss must be one of none, kl, smoothl1"),
    (["teacher.checkpoint=t.pth"], "mutual.peers and teacher.checkpoint are both set"),
    (["distill.terms=[fitnet]"], "mutual.peers and distill.terms=['fitnet'] are both set"),
    (["mutual.peers=[50]", "model.pretrained=r18.pth"], "mutual.peers=[50]: a peer of another depth than "
                                                          "model.layers=18 cannot start from model.pretrained"),
])
def test_bad_peer_configs_are_one_line_errors_naming_the_key(overrides, message):
    with pytest.raises(SegKDError) as e:
        _check(overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_peers_fail_before_the_run_directory_exists(tiny_data, tmp_path):
    from tests.test_bad_inputs import run_in_process

    run_dir = tmp_path / "run"
    r = run_in_process(["--config", DML, *tiny_overrides(tiny_data, str(run_dir)), "mutual.peers=[18,19]"])
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: command line: mutual.peers=[18, 19]: must be a list of depths out of 18, 34, 50, 101"]
    assert not run_dir.exists()


def _mutual_run(tmp_path, classes=K):
    """A mutual run's model/final.pth (every peer) and its peers' checkpoints, as the trainer writes them."""
    cfg = load_config(DML, [f"data.classes={classes}", "model.layers=34", "mutual.peers=[18]"])
    meta = run_meta(cfg, False)
    nets = torch.nn.ModuleList([build_pspnet(34, classes), build_pspnet(18, classes)])
    run = tmp_path / "run"
    save_checkpoint({**meta, "model": nets.state_dict()}, str(run / "model" / "final.pth"))
    for i, net in enumerate(nets):
        path = str(run / f"peer{i}" / "model" / "final.pth")
        save_checkpoint({**peer_meta(meta, i), "model": net.state_dict()}, path)
    return run, nets


def test_peer_checkpoints_load_as_networks_and_teachers_the_whole_run_does_not(tmp_path):
    run, nets = _mutual_run(tmp_path)
    for i, net in enumerate(nets):
        model, ckpt = model_from_checkpoint(str(run / f"peer{i}" / "model" / "final.pth"), K)
        assert ckpt["mode"] == "mutual" and ckpt["layers"] == (34, 18)[i] and ckpt["peer_of"] == [34, 18]
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), net.state_dict().values()))
    teacher_cfg = load_config("config/synthetic/pspnet18_kd.yaml", [f"data.classes={K}", "teacher.layers=18",
                                                                   f"teacher.checkpoint={run}/peer1/model/final.pth"])
    assert len(load_teacher(teacher_cfg).backbone.layer3) == 2  # the R18 peer
    whole = str(run / "model" / "final.pth")
    with pytest.raises(SegKDError, match=r"is a whole mutual-learning run \(a mutual PSPNet-R34\+R18 with 4 classes\); "
                                         r"give one peer's checkpoint, e.g. .*run/peer0/model/final.pth"):
        model_from_checkpoint(whole, K)
    with pytest.raises(SegKDError, match="another class count|data.classes=5"):
        model_from_checkpoint(str(run / "peer1" / "model" / "final.pth"), 5)  # a peer of another class count
    check_segkd(torch.load(run / "peer0" / "model" / "final.pth", weights_only=True), "p", "TEACHER")


def test_a_distilled_run_teaches_only_as_an_assistant(tmp_path):
    cfg = load_config("config/synthetic/pspnet34_kd.yaml", [f"data.classes={K}", "model.layers=18"])  # cheaper
    path = str(tmp_path / "assistant.pth")
    save_checkpoint({**run_meta(cfg, True), "model": build_pspnet(18, K).state_dict()}, path)
    student = ["config/synthetic/pspnet18_kd_ta.yaml", [f"data.classes={K}", f"teacher.checkpoint={path}",
                                                         "teacher.layers=18"]]
    assert load_teacher(load_config(student[0], student[1])) is not None  # the shipped config says assistant: true
    with pytest.raises(SegKDError, match="not a supervised teacher .*teacher.assistant=true"):
        load_teacher(load_config(student[0], [*student[1], "teacher.assistant=false"]))


def table_args(root, seeds):
    return argparse.Namespace(paths=[str(root)], eval="ss", seeds=seeds, group_by=None, baseline=None, config=None,
                              config_dir=None, out_md=None, out_csv=None)


def test_a_method_row_refuses_a_run_without_its_distill_terms(tmp_path):
    root = tmp_path / "runs"
    write_run(str(root / "pspnet18_baseline" / "seed1"), (0.50, 0.6, 0.9), 1, mode="supervised")
    write_run(str(root / "pspnet18_kd_cirkd" / "seed1"), (0.55, 0.6, 0.9), 1, terms=["cirkd"])
    write_run(str(root / "pspnet18_kd" / "seed1"), (0.54, 0.6, 0.9), 1)  # from before distill.terms: none
    _, records = make_table.build(table_args(root, "1"))
    assert {rec["row"]: rec["label"] for rec in records}["pspnet18_kd_cirkd"] == "R18 + logit KD + CIRKD"
    write_run(str(root / "pspnet18_kd_cirkd" / "seed1"), (0.54, 0.6, 0.9), 1, terms=[])  # plain KD in a method row
    with pytest.raises(SegKDError, match=r"in row pspnet18_kd_cirkd but the run is a distill R18, feat_loss none "
                                         r"\(expected distill R18, feat_loss none, distill.terms \[cirkd\]\)"):
        make_table.build(table_args(root, "1"))
    write_run(str(root / "pspnet18_kd_cirkd" / "seed1"), (0.54, 0.6, 0.9), 1, terms=["cirkd"])
    write_run(str(root / "pspnet18_kd" / "seed1"), (0.54, 0.6, 0.9), 1, terms=["at"])  # a method run in KD's row
    with pytest.raises(SegKDError, match=r"in row pspnet18_kd but the run is a .*distill.terms \[at\]"):
        make_table.build(table_args(root, "1"))


def test_the_table_labels_the_chain_and_mutual_rows_and_pairs_the_chain_with_the_direct_row(tmp_path):
    root = tmp_path / "runs"
    write_run(str(root / "pspnet50_teacher"), (0.70, 0.8, 0.9), 1, mode="supervised", layers=50)
    scores = {1: (0.50, 0.52, 0.60, 0.55, 0.51), 2: (0.52, 0.55, 0.61, 0.56, 0.50)}
    for seed, (base, kd, ta, chain, dml) in scores.items():
        write_run(str(root / "pspnet18_baseline" / f"seed{seed}"), (base, 0.6, 0.9), seed, mode="supervised")
        write_run(str(root / "pspnet18_kd" / f"seed{seed}"), (kd, 0.6, 0.9), seed)
        write_run(str(root / "pspnet34_kd" / f"seed{seed}"), (ta, 0.6, 0.9), seed, layers=34)
        write_run(str(root / "pspnet18_kd_ta" / f"seed{seed}"), (chain, 0.6, 0.9), seed)
        write_run(str(root / "dml_pspnet50_pspnet18" / f"seed{seed}"), (dml, 0.6, 0.9), seed, mode="mutual")
    text, records = make_table.build(table_args(root, "1 2"))
    by_row = {rec["row"]: rec for rec in records}
    assert [rec["row"] for rec in records][-3:] == ["pspnet34_kd", "pspnet18_kd_ta", "dml_pspnet50_pspnet18"]
    assert by_row["pspnet34_kd"]["label"] == "Assistant PSPNet-R34 + logit KD (R50 -> R34)"
    assert by_row["pspnet34_kd"].get("d_pairs") is None  # an R34: not paired with the R18 baseline
    assert by_row["pspnet18_kd_ta"]["d_mIoU"] == pytest.approx(4.5)  # (5 + 4) / 2 points above the baseline
    assert "Δ mIoU vs R18 + logit KD: +2.00 ± 1.41 (2 pairs)" in by_row["pspnet18_kd_ta"]["notes"]
    assert by_row["dml_pspnet50_pspnet18"]["label"] == "R18 + mutual learning with an R50 peer"
    assert "| R18 + logit KD from the R34 assistant (R50 -> R34 -> R18) |" in text
    write_run(str(root / "pspnet18_kd_ta" / "seed3"), (0.5, 0.6, 0.9), 3, layers=34)  # a chain row of another depth
    with pytest.raises(SegKDError, match="in row pspnet18_kd_ta but the run is a distill R34"):
        make_table.build(table_args(root, None))
