"""Training: schedules, samples, sampler, losses, gradients, checkpoints, resume, bad input,
the command line, and proof that a tiny model learns (held-out J&F above copying the
first mask)."""
from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import remn
from remn.cli import main as remn_main
from remn.config import PRESETS
from remn.data.palette import write_annotation
from remn.data.synthetic import write_davis_dataset
from remn.model import REMN
from remn.train import TrainConfig, TrainingDiverged, learning_check, train
from remn.train import augment, losses
from remn.train.cli import main as cli_main
from remn.train.clips import (
    ClipBatchSampler,
    ClipDataset,
    SampleSpec,
    StaticImageClips,
    davis_clips,
    pick_frames,
)
from remn.train.losses import IGNORE_INDEX, ClipObjective, LossWeights

SMALL = dict(  # a run of a few tiny steps: seconds on a CPU (also where CUDA exists: bit-exact resume and
    # the fp16 refusal are CPU properties; CUDA's atomic-add backward is not bit-reproducible)
    device="cpu", model="tiny", synthetic=3, synthetic_size=(32, 48), synthetic_frames=5, crop_size=(32, 48), min_crop_area=0.8,
    batch_size=2, lr=1e-3, warmup=2, progress=False, tensorboard=False, threads=1, log_every=1,
    bootstrap_range=(1, 4), skip_curriculum=((0.0, 1), (0.5, 3)), freeze_batchnorm=False,  # from scratch
)


def small_config(output, **overrides) -> TrainConfig:
    return TrainConfig(output=output, **{**SMALL, "iterations": 4, "save_every": 2, **overrides})


def checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_davis_dataset(root, 3, num_frames=6, height=40, width=56, split="train")
    return root


# ----------------------------------------------------------------- config
def test_schedules():
    config = TrainConfig(output="unused", synthetic=1, iterations=150, bootstrap_range=(20, 70), bootstrap_top_p=0.15,
                         warmup=10, lr_decay_at=(0.8,))
    assert config.hard_pixel_fraction_at(0) == 1.0 and config.hard_pixel_fraction_at(19) == 1.0
    assert config.hard_pixel_fraction_at(45) == pytest.approx(1 - 0.85 * 0.5)
    assert config.hard_pixel_fraction_at(70) == config.hard_pixel_fraction_at(149) == 0.15
    assert [config.max_skip_at(i) for i in (0, 14, 15, 30, 45, 60, 134, 135)] == [5, 5, 10, 15, 20, 25, 25, 5]
    assert config.lr_factor_at(0) == pytest.approx(0.1) and config.lr_factor_at(9) == 1.0
    assert config.lr_factor_at(119) == 1.0 and config.lr_factor_at(120) == pytest.approx(0.1)
    assert TrainConfig(output="x", synthetic=1, iterations=150).hard_pixel_fraction_at(20) == 1.0  # default 20 → 70


@pytest.mark.parametrize("bad, match", [
    (dict(synthetic=0), "no training data"),
    (dict(precision="fp8"), "precision"),
    (dict(ce_weight=0, gate_weight=0), "nothing to train"),
    (dict(num_frames=1), "num_frames"),
    (dict(model="huge"), "unknown config"),
    (dict(crop_size=(8, 8)), "crop_size"),
])
def test_config_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(output="x", **{"synthetic": 2, **bad})


# ----------------------------------------------------------------- augmentation and samples
def test_affine_identity_and_flip():
    image = torch.rand(3, 20, 30)
    ids = torch.randint(0, 4, (20, 30), dtype=torch.uint8)
    for seed in range(20):
        crop = augment.random_crop_affine(random.Random(seed), (20, 30), (20, 30), min_area=1.0)
        expected_image, expected_ids = (image.flip(-1), ids.flip(-1)) if crop.matrix[0][0] < 0 else (image, ids)
        torch.testing.assert_close(augment.warp_image(image, crop, (20, 30)), expected_image)
        assert torch.equal(augment.warp_ids(ids, crop, (20, 30)), expected_ids)
    jitter = augment.random_jitter_affine(random.Random(0), (20, 30), rotation=20, shear=10, scale=0.1, translate=0.1)
    composed = augment.compose(jitter, augment.Affine(((1.0, 0.0), (0.0, 1.0)), (0.0, 0.0)))
    assert composed == jitter


@pytest.mark.parametrize("length", [1, 2, 3, 7, 40])
def test_pick_frames(length):
    for seed in range(30):
        picked = pick_frames(random.Random(seed), length, 3, 4)
        gaps = np.diff(picked)
        assert len(picked) == 3 and 0 <= picked[0] and picked[-1] < length
        assert (gaps <= 4).all() and (gaps >= (1 if length >= 3 else 0)).all()


def test_video_samples(synthetic_root):
    dataset = ClipDataset([davis_clips(synthetic_root, "train")], num_frames=3, max_objects=3, crop_size=(32, 48))
    assert len(dataset) == 3
    valid_counts = []
    for index in range(3):
        sample = dataset[SampleSpec(index, seed=index, max_skip=2)]
        again = dataset[SampleSpec(index, seed=index, max_skip=2)]
        assert all(torch.equal(sample[k], again[k]) for k in sample)  # a pure function of the spec
        assert sample["frames"].shape == (3, 3, 32, 48) and sample["frames"].dtype == torch.float32
        assert 0 <= sample["frames"].min() and sample["frames"].max() <= 1
        assert sample["labels"].shape == (3, 32, 48) and sample["first_masks"].shape == (3, 32, 48)
        valid = sample["object_valid"]
        assert valid.tolist() == sorted(valid.tolist(), reverse=True) and valid.sum() <= 2  # 2 objects + padding
        valid_counts.append(int(valid.sum()))
        for slot in range(3):  # valid objects are visible in frame 0; padding slots are empty
            assert (sample["first_masks"][slot].sum() >= 16) == bool(valid[slot])
            assert torch.equal(sample["first_masks"][slot], (sample["labels"][0] == slot + 1).float())
    assert max(valid_counts) == 2


def test_youtube_clips_use_annotated_frames(tmp_path):
    from remn.data.palette import write_frame
    from remn.data.synthetic import make_clip
    from remn.train.clips import youtube_clips

    frames, ids = make_clip(7, num_frames=11, height=32, width=48)
    base = tmp_path / "train"
    for t in range(11):
        write_frame(base / "JPEGImages" / "v1" / f"{t:05d}.jpg", frames[t])
        if t % 5 == 0:  # annotations every 5th frame, as YouTube-VOS train has them
            write_annotation(base / "Annotations" / "v1" / f"{t:05d}.png", ids[t])
    names = [f"{t:05d}" for t in range(0, 11, 5)]
    meta = {"videos": {"v1": {"objects": {"1": {"frames": names}, "2": {"frames": names}}}}}
    (base / "meta.json").write_text(json.dumps(meta))
    source = youtube_clips(tmp_path)
    assert len(source) == 1 and source.annotated == [[0, 5, 10]]
    raw = source.load(0, random.Random(0), 3, max_skip=10)  # 10 frames = 2 annotated steps
    assert len(raw.frames) == 3 and all(a.shape == (32, 48) for a in raw.ids)
    sample = ClipDataset([source], crop_size=(32, 48))[SampleSpec(0, seed=1, max_skip=10)]
    assert sample["labels"].shape == (3, 32, 48)


def write_image(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_static_image_clips(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        write_image(tmp_path / "images" / f"{name}.jpg", rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    ids = np.zeros((40, 50), np.uint8)
    ids[5:20, 5:25], ids[22:35, 28:45] = 1, 2
    write_annotation(tmp_path / "masks" / "a.png", ids)  # palette PNG: two objects
    write_image(tmp_path / "masks" / "b.png", (ids > 0).astype(np.uint8) * 255)  # 0/255 foreground
    write_image(tmp_path / "masks" / "c.png", (ids == 2).astype(np.uint8))  # 0/1 foreground
    source = StaticImageClips(tmp_path)
    dataset = ClipDataset([source], num_frames=3, max_objects=2, crop_size=(32, 32), min_crop_area=0.9)
    counts = []
    for index in range(3):
        sample = dataset[SampleSpec(index, seed=5, max_skip=1)]
        counts.append(int(sample["object_valid"].sum()))
        assert not torch.equal(sample["frames"][0], sample["frames"][1])  # each frame is another view
    assert counts[0] in (1, 2) and counts[1] == 1 and counts[2] == 1
    weights = train(small_config(tmp_path / "run", synthetic=0, images_root=tmp_path, iterations=1))  # stage 0
    assert checkpoint(weights)["iteration"] == 1


def test_static_image_clips_bad_input(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        StaticImageClips(tmp_path)
    write_image(tmp_path / "images" / "x.png", np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="have no mask"):
        StaticImageClips(tmp_path)
    with pytest.raises(FileNotFoundError):
        StaticImageClips(tmp_path / "missing")


def test_sampler_shards_and_restarts():
    skip = lambda iteration: 1 + iteration  # noqa: E731
    whole = ClipBatchSampler(7, 4, seed=3, start=0, end=6, max_skip_at=skip)
    ranks = [ClipBatchSampler(7, 2, seed=3, start=0, end=6, max_skip_at=skip, rank=r, world_size=2) for r in (0, 1)]
    for iteration, batch in enumerate(whole):
        assert batch == ranks[0].batch(iteration) + ranks[1].batch(iteration)  # the global batch, split by rank
        assert all(spec.max_skip == 1 + iteration for spec in batch)
    restarted = ClipBatchSampler(7, 4, seed=3, start=4, end=6, max_skip_at=skip)
    assert list(restarted) == list(whole)[4:]
    epoch = [spec.index for batch in list(whole)[:7] for spec in batch][:7]
    assert sorted(epoch) == list(range(7))  # each epoch visits every item once
    assert len({spec.seed for batch in whole for spec in batch}) == 24


# ----------------------------------------------------------------- losses
def test_bootstrapped_cross_entropy():
    logits = torch.randn(2, 2, 3, 5, 6)
    labels = torch.randint(0, 3, (2, 2, 5, 6))
    labels[0, 0, :2] = IGNORE_INDEX
    full = losses.bootstrapped_cross_entropy(logits, labels, 1.0)
    per_frame = [F.cross_entropy(logits[:, t], labels[:, t], ignore_index=IGNORE_INDEX) for t in range(2)]
    torch.testing.assert_close(full, torch.stack(per_frame).mean())
    hard = losses.bootstrapped_cross_entropy(logits, labels, 0.25)
    expected = []
    for t in range(2):
        pixel = F.cross_entropy(logits[:, t], labels[:, t], ignore_index=IGNORE_INDEX, reduction="none")
        kept = pixel[labels[:, t] != IGNORE_INDEX]
        expected.append(kept.sort(descending=True).values[: int(np.ceil(0.25 * kept.numel()))].mean())
    torch.testing.assert_close(hard, torch.stack(expected).mean())
    assert hard > full


def test_prediction_iou():
    labels = torch.zeros(2, 1, 4, 5, dtype=torch.long)  # [B, T, H, W]
    labels[0, 0, :2, :2] = 1  # object 1 of clip 0: 4 pixels
    labels[0, 0, 3, :] = IGNORE_INDEX  # void row: predictions there do not count
    labels[1, 0, 2:, 3:] = 2  # slot 2 of clip 1, which is padding: left out
    logits = torch.zeros(2, 1, 3, 4, 5)  # background wins everywhere (ties go to index 0) ...
    logits[0, 0, 1, :2, 1:3] = 1  # ... except object 1 on 4 pixels, 2 of them its own
    logits[0, 0, 1, 3, :] = 1  # on the void row
    logits[1, 0, 2] = 1  # the padding slot everywhere
    valid = torch.tensor([[True, False], [True, False]])
    torch.testing.assert_close(losses.prediction_iou(logits, labels, valid), torch.tensor(2 / 6))
    assert losses.prediction_iou(torch.zeros_like(logits), torch.zeros_like(labels), valid) == 1  # nothing to find
    collapsed = torch.zeros_like(logits)
    collapsed[:, :, 0] = 5  # all background
    assert losses.prediction_iou(collapsed, labels, valid) == 0


def test_gate_targets():
    query = torch.randn(2, 8, 3, 4)
    same = torch.stack([query, query, query], dim=2)  # [B, Ck, 3, h, w]: equally useful frames
    torch.testing.assert_close(losses.gate_targets(query, same), torch.ones(2, 3))
    far = torch.stack([query, query + 10.0], dim=2)  # frame 1 matches nothing
    targets = losses.gate_targets(query, far)
    assert torch.all(targets[:, 0] == 1) and torch.all(targets[:, 1] < 0.01)
    log_scores = torch.tensor([[-0.01, -3.0]], requires_grad=True)
    good = losses.gate_loss(log_scores, torch.tensor([[1.0, 0.0]]))
    bad = losses.gate_loss(log_scores, torch.tensor([[0.0, 1.0]]))
    assert good < bad and torch.isfinite(losses.gate_loss(torch.zeros(1, 2), torch.ones(1, 2)))


def test_contrastive_prefers_matching_prototypes():
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[:, :16] = 1
    basis = torch.eye(4)
    keys = torch.zeros(1, 4, 2, 2)
    keys[:, :, 0, :] = basis[1][:, None]  # top half (object 1) along e1
    keys[:, :, 1, :] = basis[0][:, None]  # bottom half (background) along e0
    keys = keys.requires_grad_()
    matched = losses.key_contrastive_loss(keys[:, None], keys, labels[:, None], labels, 3)
    swapped = losses.key_contrastive_loss(keys.flip(-2)[:, None], keys, labels[:, None], labels, 3)
    assert matched < 0.01 < swapped
    swapped.backward()
    assert keys.grad.abs().sum() > 0


def clip_batch(batch=2, frames=3, height=32, width=48, objects=2):
    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(batch, frames, height, width, dtype=torch.long)
    for t in range(frames):
        labels[:, t, 4 + t:14 + t, 5:20] = 1
        labels[:, t, 18:28, 25 + t:40 + t] = 2
    labels[1][labels[1] == 2] = 0  # clip 1 has one object and a padding slot
    valid = torch.tensor([[True, True], [True, False]])
    first = torch.stack([(labels[:, 0] == k + 1).float() for k in range(objects)], dim=1)
    return torch.rand(batch, frames, 3, height, width, generator=generator), first, labels, valid


def test_objective_gradients_reach_gate_and_local_branch():
    model = REMN(PRESETS["tiny"].model, fused=False).train()
    frames, first, labels, valid = clip_batch()
    loss, parts = ClipObjective(model, LossWeights(ce=1.0, gate=0.1, contrastive=0.1))(frames, first, labels, valid)
    assert set(parts) == {"ce", "gate", "contrastive", "iou"} and torch.isfinite(loss)
    assert 0 <= parts["iou"] <= 1
    loss.backward()
    assert model.gate.mlp[2].weight.grad.abs().sum() > 0
    assert model.local_branch.out_proj.weight.grad.abs().sum() > 0
    assert model.key_proj.key_proj.weight.grad.abs().sum() > 0

    model.zero_grad(set_to_none=True)
    gate_only, _ = ClipObjective(model, LossWeights(ce=0.0, gate=1.0))(frames, first, labels, valid)
    gate_only.backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(name.startswith("gate.") for name in trained)  # the gate term trains the gate alone


# ----------------------------------------------------------------- runs, checkpoints, resume
def test_resume_is_bit_exact(tmp_path):
    settings = dict(iterations=6, save_every=3, contrastive_weight=0.1)
    straight = train(small_config(tmp_path / "straight", **settings))
    train(small_config(tmp_path / "split", stop_at=3, **settings))
    assert checkpoint(tmp_path / "split" / "last.pt")["iteration"] == 3
    resumed = train(small_config(tmp_path / "split", resume=tmp_path / "split" / "last.pt", **settings))
    a, b = checkpoint(straight.parent / "last.pt"), checkpoint(resumed.parent / "last.pt")
    assert a["iteration"] == b["iteration"] == 6
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert a["scheduler"] == b["scheduler"]
    log = [json.loads(line)["iteration"] for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 7))


def test_weights_load_with_build_model_and_reject_other_configs(tmp_path):
    weights = train(small_config(tmp_path / "run", iterations=2))
    for path in (weights, tmp_path / "run" / "last.pt"):
        model = remn.build_model(config="tiny", weights=path, device="cpu")
        assert isinstance(model, REMN)
    other = dataclasses.replace(PRESETS["tiny"].model, local_radius=2)
    with pytest.raises(ValueError, match="local_radius"):
        remn.build_model(config=other, weights=weights, device="cpu")
    with pytest.raises(ValueError, match="cannot resume .*local_radius"):
        train(small_config(tmp_path / "other", model=other, iterations=3, resume=tmp_path / "run" / "last.pt"))
    with pytest.raises(ValueError, match="no training state"):
        train(small_config(tmp_path / "again", iterations=3, resume=weights))


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    real = losses.bootstrapped_cross_entropy
    calls = []

    def poisoned(logits, labels, fraction):
        calls.append(1)
        value = real(logits, labels, fraction)
        return value * float("nan") if len(calls) == 3 else value

    monkeypatch.setattr(losses, "bootstrapped_cross_entropy", poisoned)
    config = small_config(tmp_path / "run", iterations=6)
    with pytest.raises(TrainingDiverged, match=r"at iteration 3: the loss is nan.*iteration 2\) is untouched"):
        train(config)
    saved = checkpoint(tmp_path / "run" / "last.pt")
    assert saved["iteration"] == 2 and not (tmp_path / "run" / "model.pt").exists()
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_bf16_autocast_on_cpu_and_fp16_refused(tmp_path):
    weights = train(small_config(tmp_path / "bf16", iterations=1, precision="bf16"))
    assert checkpoint(weights)["iteration"] == 1
    with pytest.raises(ValueError, match="fp16"):
        train(small_config(tmp_path / "fp16", iterations=1, precision="fp16"))


def test_bad_data_is_reported(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="split file"):
        train(TrainConfig(output=tmp_path / "run", davis_root=empty, iterations=1, progress=False))
    code = cli_main(["--config", "tiny", "--davis-root", str(empty), "--iterations", "1",
                     "--output", str(tmp_path / "r")])
    assert code == 2 and "split file" in capsys.readouterr().err
    write_davis_dataset(tmp_path / "partial", 1, num_frames=4, height=32, width=32, split="train")
    (tmp_path / "partial" / "Annotations" / "480p" / "synthetic-000" / "00002.png").unlink()
    with pytest.raises(ValueError, match="frames that have no mask"):
        train(TrainConfig(output=tmp_path / "run", davis_root=tmp_path / "partial", iterations=1, progress=False))


def test_cli_trains_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--config", "tiny", "--synthetic", "2", "--synthetic-size", "32", "48", "--crop-size", "32", "48",
              "--iterations", "2", "--batch-size", "1", "--lr", "1e-3", "--output", str(run), "--no-progress",
              "--threads", "1", "--save-every", "1", "--train-batchnorm"]
    assert remn_main(["train", *common, "--stop-at", "1"]) == 0  # through the `remn` dispatcher
    assert cli_main(common + ["--resume", str(run / "last.pt")]) == 0
    assert "model.pt" in capsys.readouterr().out
    assert checkpoint(run / "last.pt")["iteration"] == 2
    assert json.loads((run / "train_config.json").read_text())["model"]["name"] == "tiny"


def test_suite_recipe_learning_rate_follows_the_model():
    import argparse

    from remn.train.cli import add_arguments, config_from_args
    from remn.train.trainer import SUITE_RECIPES, SUITE_RESNET_LR

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def config(*flags):
        return config_from_args(parser.parse_args(["--synthetic", "hard", "--output", "o", *flags]))

    assert config().lr == config("--config", "small").lr == SUITE_RECIPES["hard"]["lr"]
    assert config("--config", "remn").lr == config("--config", "stcn").lr == SUITE_RESNET_LR < SUITE_RECIPES["hard"]["lr"]
    assert config("--config", "remn", "--lr", "1e-3").lr == 1e-3  # a flag given wins
    assert config("--config", "remn").iterations == SUITE_RECIPES["hard"]["iterations"]


# ----------------------------------------------------------------- it learns
def test_tiny_model_learns_on_synthetic_videos(tmp_path):
    """A shortened LEARNING_RECIPE: 24 training videos, 300 steps of 4 clips at 48×64, then
    8 held-out videos. Measured (2-core CPU): J&F 0.61 against 0.23 for copying the first
    mask, about 45 s; seeds 1–3 gave 0.53, 0.69, 0.48."""
    result = learning_check(tmp_path / "run", heldout=8, synthetic=24, iterations=300, batch_size=4,
                            bootstrap_range=(0, 120))
    assert result.jf_model > result.jf_baseline + 0.2, result
