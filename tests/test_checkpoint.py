"""Strict loading of published STCN weights, remn checkpoints and ImageNet backbones."""

import pytest
import torch

import remn
from remn.checkpoint import load_imagenet_backbones, load_weights, save_weights
from remn.model import REMN

from published_checkpoints import random_published_state


@pytest.fixture(scope="module")
def stcn_checkpoint(tmp_path_factory):
    state = random_published_state("stcn_state_dict.json")
    assert len(state) == 405
    path = tmp_path_factory.mktemp("weights") / "stcn.pth"
    torch.save(state, path)
    return path, state


def test_published_stcn_checkpoint_loads_strictly(stcn_checkpoint):
    path, state = stcn_checkpoint
    model = remn.build_model(config="stcn", weights=path, device="cpu")
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert load_weights(model, path).kept_initial == ()  # the stcn model has no gate or local branch


def test_stcn_weights_into_remn_keep_additions_neutral(stcn_checkpoint):
    path, state = stcn_checkpoint
    model = REMN(remn.PRESETS["remn"].model)
    report = load_weights(model, path)
    assert report.kept_initial == ("gate.", "local_branch.")
    assert torch.equal(model.key_proj.key_proj.weight, state["key_proj.key_proj.weight"])
    assert torch.count_nonzero(model.local_branch.out_proj.weight) == 0


def test_wrapped_and_prefixed_and_single_object_checkpoints_load(stcn_checkpoint, tmp_path):
    _, state = stcn_checkpoint
    wrapped = {"module." + k: v for k, v in state.items()}
    wrapped["module.value_encoder.conv1.weight"] = state["value_encoder.conv1.weight"][:, :4].clone()
    path = tmp_path / "s0.pth"
    torch.save({"network": wrapped}, path)
    model = remn.build_model(config="stcn", weights=path, device="cpu")
    stem = model.value_encoder.conv1.weight
    assert torch.equal(stem[:, :4], state["value_encoder.conv1.weight"][:, :4])
    assert torch.count_nonzero(stem[:, 4]) == 0


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda s: s.pop("decoder.pred.bias"), r"missing keys \(1\): decoder.pred.bias"),
        (lambda s: s.__setitem__("decoder.extra.weight", torch.zeros(1)), "unexpected keys.*decoder.extra.weight"),
        (lambda s: s.__setitem__("key_comp.bias", torch.zeros(3)), r"shape mismatches: key_comp.bias file \(3,\)"),
    ],
)
def test_mismatched_checkpoints_are_refused(stcn_checkpoint, tmp_path, corrupt, message):
    state = dict(stcn_checkpoint[1])
    corrupt(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=message):
        remn.build_model(config="stcn", weights=path, device="cpu")


def test_partial_remn_module_is_refused(tmp_path):
    model = remn.build_model(config="tiny", device="cpu")
    state = model.state_dict()
    state.pop("gate.mlp.0.weight")
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing keys.*gate.mlp.0.weight"):
        remn.build_model(config="tiny", weights=path, device="cpu")


def test_remn_checkpoint_round_trip_and_config_mismatch(tmp_path):
    model = remn.build_model(config="tiny", device="cpu")
    path = tmp_path / "run" / "model.pt"
    save_weights(model, path, iteration=7)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind
    again = remn.build_model(config="tiny", weights=path, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="saved for config 'tiny'.*local_radius"):
        remn.build_model(config="tiny", local_radius=2, weights=path, device="cpu")


def test_unreadable_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        remn.build_model(config="tiny", weights=tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        remn.build_model(config="tiny", weights=garbage)


def torchvision_like(module, renames=(), extra=(), drop_suffix=None, narrow_stem=None):
    """A state dict named like torchvision's ResNet for one of our encoders."""
    state = {}
    for key, value in module.state_dict().items():
        if key.startswith("fuser.") or (drop_suffix and drop_suffix(key)):
            continue
        for ours, theirs in renames:
            key = key.replace(ours, theirs, 1) if key.startswith(ours) else key
        state[key] = torch.randn_like(value.float()).to(value.dtype)
    if narrow_stem:
        state["conv1.weight"] = state["conv1.weight"][:, :narrow_stem].clone()
    state.update({name: torch.zeros(2) for name in extra})
    return state


def test_imagenet_backbones_load_by_name(tmp_path):
    model = remn.build_model(config="tiny", device="cpu")
    resnet50 = torchvision_like(model.key_encoder, renames=[("res2.", "layer1.")], extra=["fc.weight", "layer4.0.conv1.weight"])
    conv_bias = {f"{n}.bias" for n, m in model.value_encoder.named_modules() if isinstance(m, torch.nn.Conv2d)}
    resnet18 = torchvision_like(model.value_encoder, drop_suffix=lambda k: k in conv_bias, narrow_stem=3, extra=["fc.bias"])
    torch.save(resnet50, tmp_path / "r50.pth")
    torch.save(resnet18, tmp_path / "r18.pth")
    load_imagenet_backbones(model, resnet50=tmp_path / "r50.pth", resnet18=tmp_path / "r18.pth")
    assert torch.equal(model.key_encoder.res2[0].conv1.weight, resnet50["layer1.0.conv1.weight"])
    assert torch.equal(model.value_encoder.conv1.weight[:, :3], resnet18["conv1.weight"])
    assert torch.count_nonzero(model.value_encoder.conv1.weight[:, 3:]) == 0

    resnet50.pop("layer2.0.conv1.weight")
    torch.save(resnet50, tmp_path / "r50_bad.pth")
    with pytest.raises(ValueError, match="missing keys.*layer2.0.conv1.weight"):
        load_imagenet_backbones(model, resnet50=tmp_path / "r50_bad.pth")
