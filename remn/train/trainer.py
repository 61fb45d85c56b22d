"""The training loop: `train(TrainConfig) -> Path` and the learning check.

A run folder (`TrainConfig.output`) holds:

    train_config.json   the settings of the latest invocation
    log.jsonl           one JSON line every `log_every` iterations (losses averaged over them)
    last.pt             the full training state (atomic; every `save_every` iterations and at
                        the end): weights + model config (so `remn.build_model(weights=...)`
                        reads it), optimizer, lr scheduler, grad scaler, iteration, and the
                        python / numpy / torch (CPU and CUDA) RNG states
    model.pt            the weights alone (`save_weights`), written when the invocation ends
    data/               the synthetic dataset, with `synthetic > 0`
    tensorboard/        scalars, when the `tensorboard` package imports

`resume` continues from a last.pt bit for bit: the data sampler rebuilds any iteration's
batches from the seed alone (`ClipBatchSampler`), the schedules are functions of the
iteration, and the rest of the state is in the checkpoint. A non-finite loss or gradient
stops the run with `TrainingDiverged` before the optimiser step, leaving the last
checkpoint as it was.
"""
from __future__ import annotations

import json
import math
import random
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from remn import distributed
from remn.checkpoint import load_imagenet_backbones, load_weights, save_weights
from remn.precision import autocast_dtype
from remn.model import REMN
from remn.train.clips import ClipBatchSampler, ClipDataset, build_clip_dataset
from remn.train.config import TrainConfig
from remn.train.losses import ClipObjective, LossWeights

CHECKPOINT_NAME = "last.pt"
WEIGHTS_NAME = "model.pt"
LOG_NAME = "log.jsonl"
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "iteration", "rng")


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


# ----------------------------------------------------------------- set-up pieces
def write_synthetic_data(config: TrainConfig) -> Path:
    """Write the synthetic DAVIS-layout training set of a config to OUTPUT/data (train split):
    a named suite's train split (`remn.data.synthetic.SUITES`, at its own size), or N
    synthetic sequences."""
    from remn.data.synthetic import write_davis_dataset, write_suite

    root = Path(config.output) / "data"
    if isinstance(config.synthetic, str):
        write_suite(root, config.synthetic, seed=config.synthetic_seed, split="train")
        return root
    height, width = config.synthetic_size
    write_davis_dataset(root, config.synthetic, seed=config.synthetic_seed, num_frames=config.synthetic_frames,
                        height=height, width=width, num_objects=max(2, config.max_objects), split="train")
    return root


def build_training_model(config: TrainConfig, device: torch.device) -> REMN:
    """The model, seeded by `config.seed`, with ImageNet backbones or initial weights if
    given, in training mode (BatchNorm frozen with `config.freeze_batchnorm`)."""
    torch.manual_seed(config.seed)
    model = REMN(config.model_config, fused=config.fused)
    pretrained = config.imagenet_resnet50 is not None or config.imagenet_resnet18 is not None
    if pretrained:
        load_imagenet_backbones(model, config.imagenet_resnet50, config.imagenet_resnet18)
    if config.init_weights is not None:
        load_weights(model, config.init_weights)
    if config.freeze_batchnorm and not (pretrained or config.init_weights is not None or config.resume is not None):
        warnings.warn(
            "freeze_batchnorm=True (the published recipe) but the model starts from random weights: BatchNorm "
            "will normalise with its initial statistics (mean 0, variance 1) throughout; train from scratch "
            "with freeze_batchnorm=False (remn train --train-batchnorm)", stacklevel=2)
    return set_training_mode(model.to(device), config.freeze_batchnorm)


def set_training_mode(model: nn.Module, freeze_batchnorm: bool) -> nn.Module:
    """model.train(), then, with freeze_batchnorm, every BatchNorm layer back in eval mode.

    STCN and RDE-VOS call `network.eval()` for training (model/model.py: "Shall be in eval()
    mode to freeze BN parameters"); BatchNorm is the only layer of REMN whose behaviour
    depends on the mode, so this is the same. Frozen layers normalise with their running
    statistics and leave them unchanged; their affine weight and bias still get gradients.
    """
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `config.precision` on this device, or None for full precision
    (`remn.precision.autocast_dtype`; fp16 gets a grad scaler)."""
    bf16_supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return autocast_dtype(config.precision, device.type, bf16_supported)


def capture_rng_state() -> dict:
    """Python, numpy and torch RNG states, as tensors and plain values (loadable with weights_only)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainingState:
    model: REMN
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    iteration: int = 0  # optimiser steps completed


def save_checkpoint(state: TrainingState, config: TrainConfig, path: Path) -> None:
    """Write the full training state to `path` atomically (loadable by `load_weights` too)."""
    save_weights(
        state.model, path,
        optimizer=state.optimizer.state_dict(),
        scheduler=state.scheduler.state_dict(),
        scaler=None if state.scaler is None else state.scaler.state_dict(),
        iteration=state.iteration,
        rng=capture_rng_state(),
        train_config=config.to_dict(),
    )


def load_checkpoint(state: TrainingState, path: str | Path) -> None:
    """Restore a `save_checkpoint` file into `state` (model, optimiser, scheduler, scaler,
    iteration, RNG states). A checkpoint of another model config raises ValueError."""
    path = Path(path)
    try:
        load_weights(state.model, path)
    except ValueError as err:
        raise ValueError(f"cannot resume from {path}: {err}") from err
    payload = torch.load(path, map_location="cpu", weights_only=True)
    missing = [key for key in TRAINING_STATE_KEYS if key not in payload]
    if missing:
        raise ValueError(f"cannot resume from {path}: it holds weights but no training state ({', '.join(missing)} "
                         "missing); start a new run from it with init_weights / --init-weights instead")
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    if state.scaler is not None and payload.get("scaler") is not None:
        state.scaler.load_state_dict(payload["scaler"])
    state.iteration = int(payload["iteration"])
    restore_rng_state(payload["rng"])


class RunLog:
    """Rank 0's log.jsonl, optional TensorBoard and tqdm bar; inert on other ranks."""

    def __init__(self, config: TrainConfig, enabled: bool, start: int):
        self.enabled = enabled
        self.config = config
        self.sums: dict[str, float] = {}
        self.count = 0
        self.bar = self.writer = None
        self.last_time, self.last_iteration = time.perf_counter(), start
        if not enabled:
            return
        output = Path(config.output)
        self.path = output / LOG_NAME
        self._truncate(start)
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: the jsonl log is enough
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(output / "tensorboard"))
        if config.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=config.end_iteration, initial=start, desc="train", unit="it", dynamic_ncols=True)

    def _truncate(self, start: int) -> None:
        """Drop records past `start` (from a run that went on after its last checkpoint)."""
        if not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("iteration", 0) <= start]
        if len(kept) != len(lines):
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def add(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def step(self, iteration: int, extra: dict, force: bool = False) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
        if not (force or iteration % self.config.log_every == 0) or self.count == 0:
            return
        now = time.perf_counter()
        means = {name: total / self.count for name, total in self.sums.items()}
        record = {"iteration": iteration, **{k: round(v, 6) for k, v in means.items()}, **extra,
                  "it_per_s": round((iteration - self.last_iteration) / max(now - self.last_time, 1e-9), 3)}
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in record.items():
                if name != "iteration" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{name}", value, iteration)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{means.get('loss', math.nan):.4f}", iou=f"{means.get('iou', math.nan):.3f}",
                                 lr=f"{extra.get('lr', 0):.2e}")
        self.sums, self.count = {}, 0
        self.last_time, self.last_iteration = now, iteration

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _describe(parts: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in parts.items())


# ----------------------------------------------------------------- the loop
def train(config: TrainConfig) -> Path:
    """Train (or resume) a run; returns OUTPUT/model.pt, loadable with
    `remn.build_model(config=<the model preset>, weights=path)`.

    Runs distributed when launched by torchrun (see `remn.distributed`), else on
    `config.device` (default CUDA when available). Raises ValueError / FileNotFoundError
    for bad data or checkpoints and `TrainingDiverged` for a NaN/inf loss or gradient.
    """
    with cpu_threads(config.threads):
        context = distributed.init_distributed(config.device)
        try:
            return _train(config, context)
        finally:
            distributed.close_distributed(context)


@contextmanager
def cpu_threads(count: int | None):
    """Run with `count` intra-op CPU threads (None: unchanged), restoring the previous count after.

    Small models on a busy machine run far faster on one thread: PyTorch's worker threads
    wait actively, and on oversubscribed cores a step can slow down tenfold.
    """
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train(config: TrainConfig, context: distributed.DistributedContext) -> Path:
    output = Path(config.output)
    device = context.device
    if context.is_main:
        output.mkdir(parents=True, exist_ok=True)
        (output / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        if config.synthetic:
            write_synthetic_data(config)
    distributed.barrier(context)
    dataset = build_clip_dataset(config)
    if config.deterministic:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest kernels

    model = build_training_model(config, device)
    dtype = amp_dtype(config, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: config.lr_factor_at(step))
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    state = TrainingState(model, optimizer, scheduler, scaler)
    if config.resume is not None:
        load_checkpoint(state, config.resume)
    weights = LossWeights(config.ce_weight, config.gate_weight, config.contrastive_weight,
                          config.contrastive_temperature, config.rde_consistency_weight, config.rde_distillation_weight)
    # parameters a clip pass may leave unused (RDE's compressor on static images) need DDP's search
    unused = getattr(model, "mem_compress", None) is not None
    objective = ClipObjective(model, weights, rde_embedding_reads=config.stage == "video")
    objective = distributed.wrap(objective, context, find_unused_parameters=unused)

    if state.iteration < config.end_iteration:
        _run_iterations(config, context, state, objective, dataset, dtype)
    if context.is_main:
        save_weights(model, output / WEIGHTS_NAME, iteration=state.iteration)
    distributed.barrier(context)
    return output / WEIGHTS_NAME


def _loader(config: TrainConfig, context, dataset: ClipDataset, start: int) -> DataLoader:
    sampler = ClipBatchSampler(len(dataset), config.batch_size, seed=config.seed, start=start,
                               end=config.end_iteration, max_skip_at=config.max_skip_at,
                               rank=context.rank, world_size=context.world_size)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                      pin_memory=context.device.type == "cuda",
                      generator=torch.Generator().manual_seed(config.seed))  # leaves the global RNG alone


def _run_iterations(config, context, state: TrainingState, objective, dataset, dtype) -> None:
    output, device = Path(config.output), context.device
    checkpoint = output / CHECKPOINT_NAME
    log = RunLog(config, context.is_main, state.iteration)
    parameters = [p for p in state.model.parameters() if p.requires_grad]
    last_saved = (Path(config.resume), state.iteration) if config.resume is not None else None
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
    try:
        for batch in _loader(config, context, dataset, state.iteration):
            step = state.iteration  # 0-based index of the step being taken
            frames = batch["frames"].to(device, non_blocking=True)
            first_masks = batch["first_masks"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            object_valid = batch["object_valid"].to(device, non_blocking=True)
            perturbed = batch.get("perturbed_first_masks")  # RDE models only
            if perturbed is not None:
                perturbed = perturbed.to(device, non_blocking=True)
            hard_fraction = config.hard_pixel_fraction_at(step)
            with autocast():
                loss, parts = objective(frames, first_masks, labels, object_valid, hard_fraction, perturbed)
            names = ["loss", *parts]
            values = distributed.mean_over_ranks(
                context, torch.stack([loss.detach().float(), *(v.float() for v in parts.values())]))
            values = dict(zip(names, values.tolist()))
            if not math.isfinite(values["loss"]):
                _diverged(step + 1, f"the loss is {values['loss']} ({_describe(values)})", last_saved)

            state.optimizer.zero_grad(set_to_none=True)
            if state.scaler is not None:
                state.scaler.scale(loss).backward()
                state.scaler.unscale_(state.optimizer)
            else:
                loss.backward()
            max_norm = config.clip_grad if config.clip_grad is not None else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
            if state.scaler is None and not math.isfinite(grad_norm):
                _diverged(step + 1, f"the gradient norm is {grad_norm} (loss {values['loss']:.4g})", last_saved)
            if state.scaler is not None:
                state.scaler.step(state.optimizer)  # skipped, and the scale lowered, on inf/NaN gradients
                state.scaler.update()
            else:
                state.optimizer.step()
            state.scheduler.step()
            state.iteration = step + 1

            log.add({**values, "grad_norm": grad_norm})
            finished = state.iteration == config.end_iteration
            log.step(state.iteration, {"lr": state.optimizer.param_groups[0]["lr"], "hard_fraction": hard_fraction,
                                       "max_skip": config.max_skip_at(step)}, force=finished)
            if state.iteration % config.save_every == 0 or finished:
                if context.is_main:
                    save_checkpoint(state, config, checkpoint)
                last_saved = (checkpoint, state.iteration)
    finally:
        log.close()


def _diverged(iteration: int, reason: str, last_saved: tuple[Path, int] | None) -> None:
    if last_saved is None:
        kept = "no checkpoint was written yet"
    else:
        kept = f"the last good checkpoint {last_saved[0]} (iteration {last_saved[1]}) is untouched"
    raise TrainingDiverged(
        f"training diverged at iteration {iteration}: {reason}; stopped before the optimiser step, {kept}. "
        "Resume from it with a lower learning rate or gradient clipping (--clip-grad)."
    )


# ----------------------------------------------------------------- learning check
@dataclass
class LearningCheck:
    """Held-out J&F of a freshly trained model against copying the first-frame mask."""

    jf_model: float
    jf_baseline: float
    j_model: float
    j_baseline: float
    iterations: int
    train_seconds: float
    eval_seconds: float
    weights: Path

    @property
    def margin(self) -> float:
        return self.jf_model - self.jf_baseline


def inference_config_for(model: REMN):
    """The inference preset users would run this model with: the one named like its config
    (tiny, remn, stcn, rde), else the remn (or, with RDE's compressor, rde) policy; frames
    keep their size."""
    from remn.config import PRESETS
    from remn.inference import resolve_inference_config

    name = model.config.name
    if name not in PRESETS:
        name = "rde" if model.config.memory == "rde" else "remn"
    return resolve_inference_config(name, size=None)


def segment_clip(model: REMN, frames: np.ndarray, first_ids: np.ndarray) -> np.ndarray:
    """Segment a clip as `remn segment` does: `Segmenter` with `inference_config_for(model)`.

    frames uint8 [T, H, W, 3], first_ids uint8 [H, W] → predicted ids uint8 [T, H, W]
    (frame 0 is the given mask).
    """
    from remn.inference import Segmenter

    segmenter = Segmenter(model, inference_config_for(model))
    first = np.where(first_ids == 255, 0, first_ids)  # DAVIS's void label is no object
    labels = [segmenter.step(frame, first if t == 0 else None).labels for t, frame in enumerate(frames)]
    return torch.stack(labels).to(torch.uint8).cpu().numpy()


def heldout_clips(num_clips: int, *, seed: int, num_frames: int, size: tuple[int, int]) -> dict[str, tuple]:
    """Synthetic evaluation clips: name → (frames uint8 [T, H, W, 3], ids uint8 [T, H, W])."""
    from remn.data.synthetic import make_clip, sequence_seed

    return {f"heldout-{i:03d}": make_clip(sequence_seed(seed, i), num_frames, *size, 2, distractors=1)
            for i in range(num_clips)}


def evaluate_against_copy(model: REMN, clips: dict[str, tuple]) -> tuple[dict, dict]:
    """J&F tables (global) of the model and of copying the first mask: ({"J&F", "J", "F"}, same)."""
    from remn.evaluate import evaluate_predictions

    truth = {name: ids for name, (_, ids) in clips.items()}
    predictions, copies = {}, {}
    for name, (frames, ids) in clips.items():
        predictions[name] = segment_clip(model, frames, ids[0])
        copies[name] = np.repeat(ids[:1], len(ids), axis=0)

    def scores(predicted):
        table, _ = evaluate_predictions(predicted, truth)
        return {key: float(table[column][0]) for key, column in (("J&F", "J&F-Mean"), ("J", "J-Mean"), ("F", "F-Mean"))}

    return scores(predictions), scores(copies)


# Trains the tiny model from scratch on a 2-core CPU in a few minutes (remn demo and the
# learning check). It departs from the published recipes where training from scratch needs it:
# BatchNorm trains (freeze_batchnorm=False: the published freeze keeps the statistics of the
# pretrained weights it starts from; a random network has none worth keeping, and frozen at
# their initial mean 0 / variance 1 they would not normalise at all), a 100× larger learning
# rate with warm-up and gradient clipping for a network that starts random, tiny crops, short
# frame gaps for 10-frame synthetic videos, and a short run with an early hard-pixel schedule.
# Full precision (precision="fp32") keeps its numbers the same on a machine with CUDA.
LEARNING_RECIPE = dict(
    model="tiny", synthetic=48, synthetic_size=(48, 64), synthetic_frames=10, crop_size=(48, 64),
    min_crop_area=0.7, iterations=600, batch_size=8, lr=1.5e-3, lr_decay_at=(0.8,), warmup=20,
    skip_curriculum=((0.0, 2), (0.3, 4)), bootstrap_range=(0, 240), bootstrap_top_p=0.3,
    gate_weight=0.1, contrastive_weight=0.0, save_every=10_000, log_every=25, clip_grad=5.0, threads=1,
    precision="fp32", freeze_batchnorm=False,
)

# `remn train --synthetic SUITE` starts from these (flags given replace them): the recipe
# above, scaled to the small model on the hard suite. 5-frame clips, so a query reads banks of
# up to 4 frames and the gate learns on banks, not pairs; 96×144 crops of the 128×192 videos
# (a 6×9 key map: a radius-2 window covers 25 of 54 positions, so the local branch learns
# where its window matters), one video object pair per clip with the twins unannotated. Sized
# to finish in about 15 minutes on 2 cores.
SUITE_RECIPES = {
    "hard": dict(
        model="small", crop_size=(96, 144), min_crop_area=0.6, num_frames=5, max_objects=2,
        iterations=1000, batch_size=4, lr=1.5e-3, lr_decay_at=(0.8,), warmup=20,
        skip_curriculum=((0.0, 2), (0.4, 4)), bootstrap_range=(0, 400), bootstrap_top_p=0.3,
        gate_weight=0.1, contrastive_weight=0.0, save_every=100, log_every=25, clip_grad=5.0, threads=2,
        precision="fp32", freeze_batchnorm=False,
    ),
}

# The suite recipe's learning rate is the small model's. The ResNet-50 / ResNet-18 presets
# (remn, stcn, rde), trained from scratch at it, blow up: the decoder (no normalisation,
# as STCN's) grows its activations to thousands, its logits saturate and the model predicts
# background everywhere, with no gradient left to recover (three 200-iteration remn runs of
# four on the hard suite). At 4e-4 the same run learns (training IoU in log.jsonl), so
# `suite_recipe` gives these presets this rate.
SUITE_RESNET_PRESETS = ("remn", "stcn", "rde")
SUITE_RESNET_LR = 4e-4


def suite_recipe(suite, model=None) -> dict:
    """The `SUITE_RECIPES` defaults of `remn train --synthetic SUITE [--config MODEL]` ({} when
    `suite` is no suite name). `model` is the preset given on the command line (None: the
    suite's own); a ResNet preset takes `SUITE_RESNET_LR`."""
    recipe = dict(SUITE_RECIPES.get(suite, {}))
    if recipe and model in SUITE_RESNET_PRESETS:
        recipe["lr"] = SUITE_RESNET_LR
    return recipe


def learning_check(output: str | Path, *, heldout: int = 16, heldout_seed: int = 1_000_003,
                   progress: bool = False, **overrides) -> LearningCheck:
    """Train on synthetic videos and score held-out synthetic videos against the baseline.

    `LEARNING_RECIPE` is the default run (overrides replace its fields, e.g. iterations=300);
    held-out clips come from `heldout_seed`, disjoint from the training seeds. The model
    segments each held-out clip with the `Segmenter` users run (`segment_clip`) and
    `remn.evaluate` scores it with the DAVIS protocol, as it does the copy-first-mask
    baseline.
    """
    settings = {**LEARNING_RECIPE, "output": output, "progress": progress, "tensorboard": False, **overrides}
    config = TrainConfig(**settings)
    started = time.perf_counter()
    weights = train(config)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model = REMN(config.model_config, fused=config.fused)
    load_weights(model, weights)
    model.eval()
    clips = heldout_clips(heldout, seed=heldout_seed, num_frames=config.synthetic_frames, size=config.synthetic_size)
    with cpu_threads(config.threads):
        trained, baseline = evaluate_against_copy(model, clips)
    return LearningCheck(trained["J&F"], baseline["J&F"], trained["J"], baseline["J"], config.iterations,
                         train_seconds, time.perf_counter() - started, weights)
