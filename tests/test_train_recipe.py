"""Training follows the published STCN / RDE-VOS recipes: frozen BatchNorm, the recipe
defaults, the max-skip curriculum, mixed precision on CUDA only."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from remn.config import PRESETS
from remn.model import REMN
from remn.train import TrainConfig, train
from remn.train.trainer import (
    LEARNING_RECIPE,
    amp_dtype,
    build_training_model,
    resolve_amp,
    set_training_mode,
)

RUN = dict(  # one tiny step on the CPU
    device="cpu", synthetic=2, synthetic_size=(32, 48), synthetic_frames=6, crop_size=(32, 48), min_crop_area=0.8,
    iterations=1, batch_size=2, lr=1e-3, progress=False, tensorboard=False, threads=1, save_every=10,
)


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()
            if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


# ----------------------------------------------------------------- BatchNorm
@pytest.mark.parametrize("freeze", [True, False])
def test_batchnorm_running_stats_frozen_or_trained(tmp_path, freeze):
    config = TrainConfig(output=tmp_path / "run", model="tiny", freeze_batchnorm=freeze, **RUN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        initial = build_training_model(config, torch.device("cpu"))
    assert any("random weights" in str(w.message) for w in caught) == freeze  # frozen from scratch is flagged
    before, bn_weight = batchnorm_state(initial), initial.key_encoder.bn1.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        weights = train(config)
    trained = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    changed = [name for name, value in before.items() if not torch.equal(trained[name], value)]
    if freeze:
        assert changed == []  # running statistics used, never updated
    else:
        assert len(changed) == len(before)  # every running statistic moved
    assert not torch.equal(trained["key_encoder.bn1.weight"], bn_weight)  # the affine part trains either way


def test_set_training_mode_puts_only_batchnorm_in_eval():
    model = set_training_mode(REMN(PRESETS["tiny"], fused=False), freeze_batchnorm=True)
    modes = {type(m).__name__: m.training for m in model.modules()}
    assert modes["BatchNorm2d"] is False and model.training and model.decoder.training
    assert all(m.training for m in set_training_mode(model, False).modules())


def test_demo_recipe_trains_batchnorm_from_scratch():
    assert LEARNING_RECIPE["freeze_batchnorm"] is False and LEARNING_RECIPE["amp"] == "off"
    assert TrainConfig(output="x", synthetic=1).freeze_batchnorm is True  # the published default


# ----------------------------------------------------------------- recipe defaults
@pytest.mark.parametrize("model, data, expected", [
    # STCN util/hyper_para.py stage 3 and stage 0; RDE-VOS README stage 0 -> 3 and stage 0
    ("remn", dict(synthetic=1), dict(recipe="stcn-video", iterations=150_000, batch_size=4, lr=1e-5, num_frames=3,
                                     decay=125_000, warm=(20_000, 70_000))),
    ("stcn", dict(images_root="static"), dict(recipe="stcn-static", iterations=300_000, batch_size=8, lr=1e-5,
                                              num_frames=3, decay=150_000, warm=(20_000, 70_000))),
    ("rde", dict(davis_root="davis"), dict(recipe="rde-video", iterations=150_000, batch_size=4, lr=2e-5, num_frames=5,
                                           decay=125_000, warm=(20_000, 70_000))),
    ("rde", dict(images_root="static"), dict(recipe="rde-static", iterations=75_000, batch_size=16, lr=2e-5,
                                             num_frames=3, decay=37_500, warm=(5_000, 17_500))),
])
def test_published_recipe_defaults(model, data, expected):
    config = TrainConfig(output="x", model=model, **data)
    assert config.recipe == expected["recipe"]
    for name in ("iterations", "batch_size", "lr", "num_frames"):
        assert getattr(config, name) == expected[name], name
    assert config.weight_decay == 1e-7 and config.lr_decay == 0.1 and config.warmup == 0
    decay = expected["decay"]
    assert config.lr_factor_at(decay - 1) == 1.0 and config.lr_factor_at(decay) == pytest.approx(0.1)
    start, end = expected["warm"]
    assert config.hard_pixel_fraction_at(start - 1) == 1.0 and config.hard_pixel_fraction_at(start) == 1.0
    assert config.hard_pixel_fraction_at(end) == 0.15 and config.hard_pixel_fraction_at((start + end) // 2) < 1.0


def test_explicit_settings_and_recipes_override_the_derived_ones():
    config = TrainConfig(output="x", model="rde", synthetic=1, num_frames=3, lr=3e-5, recipe="stcn-video")
    assert (config.num_frames, config.lr, config.batch_size) == (3, 3e-5, 4)
    with pytest.raises(ValueError, match="recipe must be one of"):
        TrainConfig(output="x", synthetic=1, recipe="stcn-stage9")


def test_stcn_skip_curriculum_boundaries():
    """STCN train.py, stages 2/3: skip 5, then [10, 15, 20, 25, 5] from [0.1, 0.2, 0.3, 0.4, 0.9] of the run."""
    for model in ("remn", "rde"):
        config = TrainConfig(output="x", model=model, synthetic=1)
        at = {i: config.max_skip_at(i) for i in (0, 14_999, 15_000, 29_999, 30_000, 44_999, 45_000, 59_999, 60_000,
                                                 134_999, 135_000, 149_999)}
        assert list(at.values()) == [5, 5, 10, 10, 15, 15, 20, 20, 25, 25, 5, 5]


# ----------------------------------------------------------------- mixed precision
def test_amp_default_resolves_on_for_cuda_off_for_cpu():
    config = TrainConfig(output="x", synthetic=1)
    assert config.amp == "auto"
    assert resolve_amp(config.amp, "cuda", bf16_supported=True) == torch.bfloat16
    assert resolve_amp(config.amp, "cuda", bf16_supported=False) == torch.float16  # the published fp16 + GradScaler
    assert resolve_amp(config.amp, "cpu", bf16_supported=False) is None
    assert amp_dtype(config, torch.device("cpu")) is None
    assert resolve_amp("fp16", "cuda", True) == torch.float16 and resolve_amp("off", "cuda", True) is None
    assert resolve_amp("bf16", "cpu", False) == torch.bfloat16
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_amp("fp16", "cpu", False)

