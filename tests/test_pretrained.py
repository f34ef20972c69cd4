"""ImageNet / local backbone weights: hub cache, offline error, wrappers, strict key checks. No downloads."""

import os

import pytest
import torch
import torchvision

from model.backbone import ResNetBackbone, load_backbone_weights
from model.pspnet import build_pspnet
from util.errors import SegKDError


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME; downloads fail loudly unless a test replaces the downloader."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(url, *args, **kwargs):
        raise OSError(f"network disabled in tests: {url}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return tmp_path / "torch_home"


def fabricated_r18() -> dict[str, torch.Tensor]:
    """A torchvision-layout ResNet-18 state dict (with fc) whose values are not the default init."""
    torch.manual_seed(123)
    sd = torchvision.models.resnet18().state_dict()
    return {k: v + torch.rand_like(v) if v.is_floating_point() else v for k, v in sd.items()}


def assert_loaded(backbone: ResNetBackbone, saved: dict[str, torch.Tensor]) -> None:
    own = backbone.state_dict()
    keys = [k.removeprefix("module.") for k in saved if not k.removeprefix("module.").startswith("fc.")]
    assert sorted(keys) == sorted(own)
    for k, v in saved.items():
        k = k.removeprefix("module.")
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k


def test_pretrained_true_loads_from_hub_cache(torch_home):
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    saved = fabricated_r18()
    torch.save(saved, folder / os.path.basename(url))
    assert_loaded(ResNetBackbone(18, pretrained=True), saved)
    model = build_pspnet(18, classes=3, pretrained=True)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"])


def test_offline_without_cache_names_file_url_and_folder(torch_home):
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    with pytest.raises(SegKDError) as err:
        ResNetBackbone(18, pretrained=True)
    msg = str(err.value)
    assert "\n" not in msg
    assert os.path.basename(url) in msg and url in msg
    assert os.path.join(str(torch_home), "hub", "checkpoints") in msg


def test_download_used_when_not_cached(torch_home, monkeypatch):
    saved = fabricated_r18()
    calls = []

    def fake_download(url, *args, **kwargs):
        calls.append(url)
        return saved

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    assert_loaded(ResNetBackbone(18, pretrained=True, weights="IMAGENET1K_V1"), saved)
    assert calls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]


def test_unknown_weights_name_lists_valid(torch_home):
    with pytest.raises(SegKDError, match=r"model\.weights.*IMAGENET1K_V2.*IMAGENET1K_V1"):
        ResNetBackbone(18, pretrained=True, weights="IMAGENET1K_V2")


@pytest.mark.parametrize("wrapper", ["state_dict", "model", None])
def test_local_path_with_module_prefix_and_wrapper(tmp_path, wrapper):
    saved = {f"module.{k}": v for k, v in fabricated_r18().items()}
    path = tmp_path / "r18.pth"
    torch.save({wrapper: saved, "epoch": 3} if wrapper else saved, path)
    assert_loaded(ResNetBackbone(18, pretrained=str(path)), saved)


def test_old_file_without_num_batches_tracked_loads():
    saved = {k: v for k, v in fabricated_r18().items() if not k.endswith("num_batches_tracked")}
    net = ResNetBackbone(18)
    load_backbone_weights(net, saved)
    assert torch.equal(net.bn1.running_var, saved["bn1.running_var"])


def test_mismatched_keys_listed_and_module_untouched():
    saved = fabricated_r18()
    saved["extra.weight"] = torch.zeros(1)
    del saved["layer4.1.conv2.weight"]
    net = ResNetBackbone(18)
    before = net.conv1.weight.clone()
    with pytest.raises(SegKDError, match="weights.pth") as err:
        load_backbone_weights(net, saved, origin="weights.pth")
    msg = str(err.value)
    assert "missing keys: layer4.1.conv2.weight" in msg and "unexpected keys: extra.weight" in msg
    assert "model.stem=semseg" in msg and "initmodel/resnet*_v2.pth" in msg
    assert torch.equal(net.conv1.weight, before)


def test_deeper_checkpoint_truncates_key_list():
    saved = torchvision.models.resnet34().state_dict()
    with pytest.raises(SegKDError, match=r"unexpected keys: layer1\.2\..*\(\+\d+ more\)"):
        load_backbone_weights(ResNetBackbone(18), saved)


def test_semseg_deep_stem_into_the_torchvision_stem_rejected_with_hint():
    saved = fabricated_r18()
    saved["conv2.weight"] = torch.zeros(64, 64, 3, 3)
    saved["conv3.weight"] = torch.zeros(128, 64, 3, 3)
    hint = r"initmodel/resnet\*_v2\.pth model\.stem=semseg"
    with pytest.raises(SegKDError, match=r"conv2\.weight.*conv3\.weight.*" + hint):
        load_backbone_weights(ResNetBackbone(18), saved)


def test_shape_mismatch_named():
    saved = fabricated_r18()
    saved["conv1.weight"] = torch.zeros(64, 4, 7, 7)
    with pytest.raises(SegKDError, match=r"conv1\.weight \(64, 4, 7, 7\) vs \(64, 3, 7, 7\)"):
        load_backbone_weights(ResNetBackbone(18), saved)


def test_missing_path_named(tmp_path):
    path = str(tmp_path / "nope.pth")
    with pytest.raises(SegKDError, match="nope.pth"):
        ResNetBackbone(18, pretrained=path)


def test_unreadable_file_named(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SegKDError, match="garbage.pth"):
        ResNetBackbone(18, pretrained=str(path))
