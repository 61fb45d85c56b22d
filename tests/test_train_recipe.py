"""Training follows the published STCN / RDE-VOS recipes: frozen BatchNorm, the recipe
defaults, the max-skip curriculum, mixed precision on CUDA only, the static-image
augmentation (TPS), RDE-VOS's first-mask perturbation, clip reading order and loss terms."""
from __future__ import annotations

import colorsys
import dataclasses
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from remn.config import PRESETS
from remn.precision import autocast_dtype
from remn.model import REMN
from remn.train import TrainConfig, train
from remn.train import augment, losses
from remn.train.clips import ClipDataset, SampleSpec, build_clip_dataset
from remn.train.rde_recipe import embedding_frames, rde_training_pass
from remn.train.trainer import (
    LEARNING_RECIPE,
    amp_dtype,
    build_training_model,
    set_training_mode,
    write_synthetic_data,
)

TINY_RDE = dataclasses.replace(PRESETS["tiny"].model, name="tiny-rde", gate=False, local_attention=False, memory="rde")
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
    model = set_training_mode(REMN(PRESETS["tiny"].model, fused=False), freeze_batchnorm=True)
    modes = {type(m).__name__: m.training for m in model.modules()}
    assert modes["BatchNorm2d"] is False and model.training and model.decoder.training
    assert all(m.training for m in set_training_mode(model, False).modules())


def test_demo_recipe_trains_batchnorm_from_scratch():
    assert LEARNING_RECIPE["freeze_batchnorm"] is False and LEARNING_RECIPE["precision"] == "fp32"
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
    with pytest.raises(ValueError, match="rde_perturb_iou"):
        TrainConfig(output="x", synthetic=1, rde_perturb_iou=(0.9, 0.8))


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
    assert config.precision == "auto"
    assert autocast_dtype(config.precision, "cuda", bf16_supported=True) == torch.bfloat16
    assert autocast_dtype(config.precision, "cuda", bf16_supported=False) == torch.float16  # the published fp16 + GradScaler
    assert autocast_dtype(config.precision, "cpu", bf16_supported=False) is None
    assert amp_dtype(config, torch.device("cpu")) is None
    assert autocast_dtype("fp16", "cuda", True) == torch.float16 and autocast_dtype("fp32", "cuda", True) is None
    assert autocast_dtype("bf16", "cpu", False) == torch.bfloat16
    with pytest.raises(ValueError, match="needs CUDA"):
        autocast_dtype("fp16", "cpu", False)


# ----------------------------------------------------------------- static-image augmentation
def test_thin_plate_spline_interpolates_its_control_points():
    height, width = 20, 30
    pixels = [(3, 4), (25, 2), (14, 10), (5, 17), (27, 16), (20, 6)]
    points = tuple(((x + 0.5) / width, (y + 0.5) / height) for x, y in pixels)  # pixel centres
    moves = tuple((0.01 * (i - 2), -0.02 * (i % 3)) for i in range(len(pixels)))
    field = augment.ThinPlateSpline(points, moves).displacement_field((height, width))
    assert field.shape == (height, width, 2)
    for (x, y), (dx, dy) in zip(pixels, moves):
        torch.testing.assert_close(field[y, x], torch.tensor([dx * width, dy * height]), atol=1e-4, rtol=0)
    still = augment.ThinPlateSpline(points, ((0.0, 0.0),) * len(pixels)).displacement_field((height, width))
    assert still.abs().max() < 1e-6


def test_thin_plate_warp_keeps_image_and_mask_aligned():
    """The image holds its own pixel coordinates (bilinear sampling of a linear function is
    exact), so the warped image says where each output pixel sampled; the warped ids must
    come from the nearest input pixel of that same place."""
    in_h, in_w, out = 40, 56, (24, 32)
    rng = random.Random(7)
    ids = torch.randint(0, 5, (in_h, in_w), dtype=torch.uint8)
    ys, xs = torch.meshgrid(torch.arange(in_h, dtype=torch.float32), torch.arange(in_w, dtype=torch.float32),
                            indexing="ij")
    coordinates = torch.stack([xs, ys, torch.zeros_like(xs)])  # [3, H, W]
    affine = augment.random_static_views(rng, (in_h, in_w), out, 1)[0]
    warp = augment.random_thin_plate(rng, out, scale=0.05)
    field = warp.displacement_field(out)
    sampled = augment.warp_image(coordinates, affine, out, displacement=field)  # [3, h, w]: (x, y) sampled
    warped_ids = augment.warp_ids(ids, affine, out, displacement=field)
    # where it sampled: A(p + d(p))
    oy, ox = torch.meshgrid(torch.arange(out[0], dtype=torch.float64), torch.arange(out[1], dtype=torch.float64),
                            indexing="ij")
    px, py = ox + field[..., 0].double(), oy + field[..., 1].double()
    (a, b), (c, d) = affine.matrix
    expected_x, expected_y = a * px + b * py + affine.offset[0], c * px + d * py + affine.offset[1]
    inside = (expected_x > 1) & (expected_x < in_w - 2) & (expected_y > 1) & (expected_y < in_h - 2)
    assert inside.float().mean() > 0.8
    torch.testing.assert_close(sampled[0].double()[inside], expected_x[inside], atol=2e-3, rtol=0)
    torch.testing.assert_close(sampled[1].double()[inside], expected_y[inside], atol=2e-3, rtol=0)
    clear = inside & ((expected_x - expected_x.round()).abs() < 0.45) & ((expected_y - expected_y.round()).abs() < 0.45)
    nearest = ids[expected_y.round().long().clamp(0, in_h - 1), expected_x.round().long().clamp(0, in_w - 1)]
    assert torch.equal(warped_ids[clear], nearest[clear])
    assert field.abs().max() > 0.5  # the warp did move pixels


def test_thin_plate_is_deterministic_under_a_seed():
    first = augment.random_thin_plate(random.Random(3), (32, 48))
    assert first == augment.random_thin_plate(random.Random(3), (32, 48))
    assert first != augment.random_thin_plate(random.Random(4), (32, 48))
    torch.testing.assert_close(first.displacement_field((32, 48)), first.displacement_field((32, 48)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="at least 12 px"):
        augment.random_thin_plate(random.Random(0), (10, 48))


def test_static_views_without_jitter_are_a_crop_and_a_flip():
    image = torch.rand(3, 20, 30)
    flips = set()
    for seed in range(12):
        views = augment.random_static_views(random.Random(seed), (20, 30), (20, 30), 3, jitter=0.0)
        for view in views:
            mirrored = view.matrix[0][0] < 0
            flips.add(mirrored)
            torch.testing.assert_close(augment.warp_image(image, view, (20, 30)), image.flip(-1) if mirrored else image)
        assert len({v.matrix[0][0] < 0 for v in views}) == 1  # the flip is shared by the clip
    assert flips == {True, False}


def test_static_clips_use_tps_and_stay_deterministic(tmp_path, monkeypatch):
    from PIL import Image

    from remn.data.palette import write_annotation
    from remn.train.clips import StaticImageClips

    (tmp_path / "images").mkdir()
    Image.fromarray((torch.rand(40, 50, 3) * 255).to(torch.uint8).numpy()).save(tmp_path / "images" / "a.png")
    ids = torch.zeros(40, 50, dtype=torch.uint8)
    ids[8:30, 10:35] = 1
    write_annotation(tmp_path / "masks" / "a.png", ids.numpy())
    dataset = ClipDataset([StaticImageClips(tmp_path)], num_frames=3, max_objects=1, crop_size=(32, 32))
    calls = []
    real = augment.random_thin_plate
    monkeypatch.setattr(augment, "random_thin_plate", lambda *a, **k: calls.append(1) or real(*a, **k))
    for seed in range(6):
        sample, again = dataset[SampleSpec(0, seed, 1)], dataset[SampleSpec(0, seed, 1)]
        assert all(torch.equal(sample[k], again[k]) for k in sample)
    assert 0 < len(calls) < 2 * 6 * 3  # roughly a third of the frames (each sample drawn twice)


def test_hue_shift_matches_hsv():
    image = torch.rand(3, 4, 5)
    for shift in (0.05, -0.3):
        expected = torch.zeros_like(image)
        for i in range(4):
            for j in range(5):
                h, s, v = colorsys.rgb_to_hsv(*image[:, i, j].tolist())
                expected[:, i, j] = torch.tensor(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v))
        torch.testing.assert_close(augment.shift_hue(image, shift), expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------- RDE-VOS: first-mask perturbation
def test_dilate_and_erode():
    dot = torch.zeros(7, 7)
    dot[3, 3] = 1
    square = augment.structuring_element(1, 3)
    grown = augment.dilate(dot, square)
    assert grown.sum() == 9 and torch.equal(grown[2:5, 2:5], torch.ones(3, 3))
    block = torch.zeros(7, 7)
    block[1:6, 1:6] = 1
    assert augment.erode(block, square).sum() == 9 and augment.erode(torch.ones(4, 4), square).sum() == 16


def test_perturb_mask_reaches_its_iou_target_deterministically():
    mask = torch.zeros(48, 64)
    mask[10:38, 12:50] = 1
    for target in (0.95, 0.85):
        perturbed = augment.perturb_mask(mask, random.Random(1), target)
        assert augment.mask_iou(perturbed, mask) < target
        assert torch.equal(perturbed, augment.perturb_mask(mask, random.Random(1), target))
        assert set(perturbed.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(augment.perturb_mask(mask, random.Random(1), 1.0), mask)


def test_rde_samples_carry_perturbed_first_masks(tmp_path):
    config = TrainConfig(output=tmp_path, model=TINY_RDE, **{**RUN, "synthetic_size": (48, 64), "crop_size": (48, 64)})
    assert config.num_frames == 5 and config.recipe == "rde-video"
    write_synthetic_data(config)
    dataset = build_clip_dataset(config)
    differs = 0
    for seed in range(3):
        sample = dataset[SampleSpec(seed % len(dataset), seed, 2)]
        assert sample["frames"].shape[0] == 5 and sample["perturbed_first_masks"].shape == sample["first_masks"].shape
        for mask, perturbed, valid in zip(sample["first_masks"], sample["perturbed_first_masks"],
                                          sample["object_valid"]):
            if valid:
                assert augment.mask_iou(perturbed, mask) > 0.2  # a corruption (small objects overshoot), not another
                differs += not torch.equal(perturbed, mask)
            else:
                assert perturbed.sum() == 0
    assert differs > 0
    stcn = TrainConfig(output=tmp_path, model="tiny", **RUN)
    assert "perturbed_first_masks" not in build_clip_dataset(stcn)[SampleSpec(0, 0, 2)]


# ----------------------------------------------------------------- RDE-VOS: the clip pass and its losses
def rde_clip(frames=5, batch=2, size=(32, 48)):
    generator = torch.Generator().manual_seed(1)
    labels = torch.zeros(batch, frames, *size, dtype=torch.long)
    for t in range(frames):
        labels[:, t, 4 + t:16 + t, 6:22] = 1
        labels[:, t, 18:28, 26 + t:40 + t] = 2
    first = torch.stack([(labels[:, 0] == k + 1).float() for k in range(2)], dim=1)  # [B, 2, H, W]
    perturbed = first.clone()
    perturbed[:, :, 8:12, 10:16] = 1 - perturbed[:, :, 8:12, 10:16]
    valid = torch.ones(batch, 2, dtype=torch.bool)
    return torch.rand(batch, frames, 3, *size, generator=generator), first, perturbed, labels, valid


def test_rde_clip_reads_in_the_published_order():
    model = REMN(TINY_RDE, fused=False).eval()
    frames, first, perturbed, _, valid = rde_clip()
    reads, compressions = [], []
    real_segment, real_compress = model.segment, model.mem_compress.forward

    def segment(features, keys, values, **kwargs):
        output = real_segment(features, keys, values, **kwargs)
        reads.append((keys, values, output))
        return output

    def compress(*args):
        result = real_compress(*args)
        compressions.append((args, result))
        return result

    model.segment = segment
    model.mem_compress.forward = compress
    with torch.no_grad():
        clip = rde_training_pass(model, frames, first, perturbed, valid)
    # frame 1 full [m0]; 2 full [m0, m1] + embedding; 3 full [m0..m2]; 4 full [m0..m3] + embedding
    assert [keys.shape[2] for keys, _, _ in reads] == [1, 2, 1, 3, 4, 1]
    assert embedding_frames(5) == (2, 4) and len(compressions) == 3  # E after m1, m2, m3
    full4_keys, full4_values, _ = reads[4]
    m = [(full4_keys[:, :, t], full4_values[:, :, :, t]) for t in range(4)]
    with torch.no_grad():
        features0 = model.encode_key(frames[:, 0])
        torch.testing.assert_close(m[0][1], model.encode_value(features0, perturbed))  # m0 from the perturbed mask
        torch.testing.assert_close(m[2][1], model.encode_value(model.encode_key(frames[:, 2]),
                                                               reads[1][2].padded_probs[:, 1:]))  # full read of frame 2
        embedding = (m[0][0], m[0][1])
        for t in (1, 2, 3):
            embedding = real_compress(embedding[0], embedding[1], m[t][0], m[t][1])
            if t == 1:
                torch.testing.assert_close(reads[2][0][:, :, 0], embedding[0])  # frame 2 reads C(m0, m1)
        torch.testing.assert_close(reads[5][0][:, :, 0], embedding[0])  # frame 4 reads C(C(C(m0, m1), m2), m3)
        torch.testing.assert_close(reads[5][1][:, :, :, 0], embedding[1])
    trained = [reads[0][2], reads[2][2], reads[3][2], reads[5][2]]  # full, embedding, full, embedding
    for t, output in enumerate(trained):
        torch.testing.assert_close(clip.logits[:, t], output.logits)
    assert len(clip.readouts) == 2 and clip.readouts[0][0].shape == (2, 2, 2 * TINY_RDE.value_dim, 2, 3)


def test_rde_clip_on_static_images_reads_the_full_memory_only():
    model = REMN(TINY_RDE, fused=False).eval()
    frames, first, perturbed, _, valid = rde_clip(frames=3)
    with torch.no_grad():
        clip = rde_training_pass(model, frames, first, perturbed, valid, embedding_reads=False)
    assert clip.readouts == [] and clip.logits.shape[1] == 2 and clip.first_values is not None


def test_object_channel_kl_is_rde_vos_kldivloss_per_object():
    student, teacher = torch.randn(2, 2, 6, 3, 4, requires_grad=True), torch.randn(2, 2, 6, 3, 4, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # KLDivLoss's 'mean' warns in favour of batchmean; RDE-VOS uses 'mean'
        published = sum(nn.KLDivLoss()(F.log_softmax(student[:, o], dim=1), F.softmax(teacher[:, o], dim=1))
                        for o in range(2))
    value = losses.object_channel_kl(student, teacher)
    torch.testing.assert_close(value, published)
    value.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad.abs().sum() > 0  # neither side detached
    assert losses.object_channel_kl(teacher, teacher.detach()).abs() < 1e-6


def test_rde_frame_weights_halve_the_running_total():
    total, loss = 0.0, torch.tensor([1.0, 10.0, 100.0, 1000.0])
    for value in loss:  # RDE-VOS LossComputer: add the frame's loss, then halve the total
        total = (total + value) / 2
    torch.testing.assert_close((losses.rde_frame_weights(4) * loss).sum(), total)
    assert losses.rde_frame_weights(4).tolist() == [1 / 16, 1 / 8, 1 / 4, 1 / 2]


def test_rde_objective_terms_and_weights():
    torch.manual_seed(0)
    model = REMN(TINY_RDE, fused=False).train()
    frames, first, perturbed, labels, valid = rde_clip()
    objective = losses.ClipObjective(model, losses.LossWeights(gate=0.0))
    assert objective.weights.rde_consistency == objective.weights.rde_distillation == 10.0
    total, parts = objective(frames, first, labels, valid, 1.0, perturbed)
    assert set(parts) == {"ce", "rde_consistency", "rde_distillation", "iou"}
    torch.testing.assert_close(total.detach(), parts["ce"] + 10 * parts["rde_consistency"] + 10 * parts["rde_distillation"])
    assert parts["rde_consistency"] > 0 and parts["rde_distillation"] > 0
    total.backward()
    assert model.mem_compress.compress_value.weight.grad.abs().sum() > 0
    assert model.value_encoder.conv1.weight.grad.abs().sum() > 0

    model.zero_grad(set_to_none=True)
    static = losses.ClipObjective(model, losses.LossWeights(gate=0.0), rde_embedding_reads=False)
    total, parts = static(frames[:, :3], first, labels[:, :3], valid, 1.0, perturbed)
    assert set(parts) == {"ce", "rde_consistency", "iou"}
    total.backward()
    assert all(p.grad is None for p in model.mem_compress.parameters())


def test_rde_model_trains_a_step_with_five_frame_clips(tmp_path):
    config = TrainConfig(output=tmp_path / "run", model=TINY_RDE, freeze_batchnorm=False, log_every=1, **RUN)
    weights = train(config)
    assert torch.load(weights, map_location="cpu", weights_only=True)["iteration"] == 1
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert '"rde_consistency"' in log and '"rde_distillation"' in log
