"""`TrainConfig`: every setting of a training run, and the schedules derived from it.

The command line (`remn train`) maps its flags onto this dataclass; Python callers build it
directly. Schedules are pure functions of the iteration (`lr_factor_at`, `max_skip_at`,
`hard_pixel_fraction_at`), so a resumed run recomputes them exactly.

Defaults are the published recipes. The settings left at None (iterations, batch size,
learning rate and its decay, frames per clip, the hard-pixel annealing) come from one of
`PUBLISHED_RECIPES`, chosen by `recipe` or, when that is None, by the model and the data:
RDE-VOS's for a model with RDE's memory (`memory="rde"`), STCN's otherwise; the static-image
stage when static images are the only source, the main video stage otherwise. Everything
else is the same in both papers' code: Adam with weight decay 1e-7, lr × 0.1 once, frozen
BatchNorm, mixed precision on CUDA, bootstrapped cross-entropy annealed to the hardest 15 %
of pixels, 384×384 crops, 2 objects per clip, and STCN's maximum-frame-gap curriculum
(`STCN_SKIP_CURRICULUM`). Where remn departs from them, the field's comment says so and why.

The published values are per process: STCN trained with 2 processes (README: two 11GB GPUs,
`--nproc_per_node=2`), RDE-VOS with 2 (main stage) or 4 (static stage); remn's `batch_size`
is per process too, so one GPU with the default sees half (a quarter) of the published
global batch.

A model trained from scratch (the `tiny` model of `remn demo`) wants BatchNorm training and
a larger learning rate: `remn.train.LEARNING_RECIPE` sets both and says why.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from remn.config import ModelConfig, resolve_config
from remn.precision import check_precision

# (start as a fraction of the run, maximum frame gap from then on). STCN's train.py (stages 2
# and 3) starts at 5 (`renew_vos_loader(5)`), then takes skip_values [10, 15, 20, 25, 5] at
# increase_skip_fraction [0.1, 0.2, 0.3, 0.4, 0.9] of the epochs; RDE-VOS's train.py is the same.
STCN_SKIP_CURRICULUM = ((0.0, 5), (0.1, 10), (0.2, 15), (0.3, 20), (0.4, 25), (0.9, 5))


@dataclass(frozen=True)
class PublishedRecipe:
    """The defaults of one published training stage (fills `TrainConfig`'s None fields).

    Fractions are of the run, so a shorter or longer run keeps the published proportions;
    at the published iteration count they are the published iterations exactly.
    """

    source: str  # the file (and stage) the values come from
    processes: int  # how many processes (GPUs) the published run used
    iterations: int
    batch_size: int  # clips per process and step
    lr: float
    lr_decay_at: tuple[float, ...]  # lr × 0.1 from these fractions of the run
    bootstrap_fractions: tuple[float, float]  # hard-pixel annealing start and end
    num_frames: int


PUBLISHED_RECIPES = {
    "stcn-static": PublishedRecipe(  # steps [150000]; BootstrappedCE(start_warm=20000, end_warm=70000)
        "STCN util/hyper_para.py, stage 0 (static images)", 2, 300_000, 8, 1e-5,
        (150_000 / 300_000,), (20_000 / 300_000, 70_000 / 300_000), 3),
    "stcn-video": PublishedRecipe(  # steps [125000]
        "STCN util/hyper_para.py, stage 3 (150K main training after static pretraining)", 2, 150_000, 4, 1e-5,
        (125_000 / 150_000,), (20_000 / 150_000, 70_000 / 150_000), 3),
    "rde-static": PublishedRecipe(  # --batch_size 16 --lr 2e-05 --steps 37500 --iterations 75000 --start_warm 5000 --end_warm 17500
        "RDE-VOS README.md, the stage 0 command", 4, 75_000, 16, 2e-5,
        (37_500 / 75_000,), (5_000 / 75_000, 17_500 / 75_000), 3),
    "rde-video": PublishedRecipe(  # --batch_size 4 --lr 2e-05 --steps 125000 --iterations 150000; warm 20000 → 70000
        "RDE-VOS README.md, the stage 0 -> 3 command (w/o BL30K); 5-frame clips from dataset/vos_dataset.py",
        2, 150_000, 4, 2e-5, (125_000 / 150_000,), (20_000 / 150_000, 70_000 / 150_000), 5),
}


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(int(v) < 16 for v in pair):
        raise ValueError(f"TrainConfig.{name} must be (height, width), each >= 16, got {value!r}")
    return int(pair[0]), int(pair[1])


@dataclass
class TrainConfig:
    """A training run. `output` is the run folder (checkpoints, log, generated data).

    Fields left at None take the value of the run's `published_recipe` in `__post_init__`.
    """

    output: str | Path
    model: str | ModelConfig | dict = "remn"  # preset name, ModelConfig or dict
    recipe: str | None = None  # a PUBLISHED_RECIPES key; None: from the model and the data (module docstring)
    iterations: int | None = None  # optimiser steps of the whole schedule

    # --- data: at least one source -------------------------------------------------
    davis_root: str | Path | None = None  # DAVIS layout; clips from `davis_split`
    davis_split: str = "train"
    davis_year: int = 2017
    davis_repeat: int = 5  # DAVIS sequences count this many times against YouTube-VOS's (STCN: [davis]*5 + [yv])
    youtube_root: str | Path | None = None  # YouTube-VOS layout (train split)
    images_root: str | Path | None = None  # static images: ROOT/images/*.jpg|png + ROOT/masks/*.png
    synthetic: int | str = 0  # > 0: write this many synthetic sequences to OUTPUT/data; a suite name ("hard"): its train split
    synthetic_size: tuple[int, int] = (64, 96)  # (H, W) of synthetic frames
    synthetic_frames: int = 10
    synthetic_seed: int = 0

    # --- clips ---------------------------------------------------------------------
    num_frames: int | None = None  # frames per clip, frame 0's mask given (STCN 3, RDE-VOS 5)
    max_objects: int = 2  # object slots per clip; unused slots are invalid objects
    crop_size: tuple[int, int] = (384, 384)  # (H, W) of every training frame
    min_crop_area: float = 0.36  # videos: random-resized-crop area fraction range [min, 1]
    geometric_jitter: float = 1.0  # scales the rotation / shear / zoom / shift / TPS ranges (0: crop and flip only)
    skip_curriculum: tuple[tuple[float, int], ...] = STCN_SKIP_CURRICULUM
    min_object_pixels: int = 16  # an object counts as visible in the first frame from this area

    # --- losses (a weight of 0 switches a term off) --------------------------------
    ce_weight: float = 1.0
    bootstrap_top_p: float = 0.15  # final fraction of hardest pixels kept
    bootstrap_range: tuple[int, int] | None = None  # (start, end) iterations; None: the recipe's, scaled to the run
    gate_weight: float = 0.1  # remn's gate (not in either paper)
    contrastive_weight: float = 0.0  # remn's key contrastive term (not in either paper)
    contrastive_temperature: float = 0.1
    # RDE models only (RDE-VOS hyper_para.py and its stage 3 command; remn.train.rde_recipe):
    rde_consistency_weight: float = 10.0  # klloss_weight: values from the perturbed vs the true first mask
    rde_distillation_weight: float = 10.0  # decoder_f2_weight = decoder_f4_weight: embedding vs full-memory readout
    rde_perturb_iou: tuple[float, float] = (0.85, 1.0)  # perturb_min, perturb_max: IoU of the first-frame memory mask

    # --- optimisation --------------------------------------------------------------
    batch_size: int | None = None  # clips per process and step
    lr: float | None = None  # Adam's learning rate
    weight_decay: float = 1e-7
    warmup: int = 0  # linear warm-up iterations
    lr_decay_at: tuple[float, ...] | None = None  # fractions of the run where lr is multiplied by lr_decay
    lr_decay: float = 0.1
    clip_grad: float | None = None  # max global gradient norm
    # remn.precision. auto: bf16 autocast on CUDA (fp16 with a grad scaler where bf16 is not
    # supported), fp32 on the CPU. Both papers autocast fp16 with a GradScaler unless --no_amp;
    # bf16 needs no scaler and has fp32's range. precision="fp16" is the published setting exactly.
    precision: str = "auto"  # fp32 | auto | bf16 | fp16 (fp16 needs CUDA; bf16 also runs on the CPU)
    # Both papers train with the network in eval() mode "to freeze BN parameters"
    # (model/model.py, `train()`): BatchNorm normalises with, and never updates, the running
    # statistics of the weights it starts from; its scale and shift still train.
    freeze_batchnorm: bool = True

    # --- run -----------------------------------------------------------------------
    seed: int = 0
    save_every: int = 1000  # checkpoint OUTPUT/last.pt every K iterations (and at the end)
    log_every: int = 10
    stop_at: int | None = None  # stop (with a checkpoint) at this iteration; resume later
    resume: str | Path | None = None  # a last.pt to continue bit for bit
    init_weights: str | Path | None = None  # start from these weights (e.g. stage 0's model.pt)
    imagenet_resnet50: str | Path | None = None
    imagenet_resnet18: str | Path | None = None
    num_workers: int = 0
    threads: int | None = None  # CPU intra-op threads while training (None: PyTorch's setting)
    device: str | None = None  # default: cuda:LOCAL_RANK when available, else cpu
    fused: bool = True  # Triton kernels on CUDA (they have backward passes); reference on CPU
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = True  # OUTPUT/tensorboard when the `tensorboard` package imports
    deterministic: bool = False  # deterministic CUDA algorithms (bit-exact resume on GPU)

    extra: dict = field(default_factory=dict)  # free-form notes saved with the run

    def __post_init__(self):
        self.output = Path(self.output)
        self.crop_size = _pair(self.crop_size, "crop_size")
        self.synthetic_size = tuple(int(v) for v in self.synthetic_size)
        self.skip_curriculum = tuple((float(f), int(s)) for f, s in self.skip_curriculum)
        model = self.model_config  # validates the preset / fields now
        if not any((self.davis_root, self.youtube_root, self.images_root, self.synthetic)):
            raise ValueError("no training data: give davis_root, youtube_root, images_root or synthetic > 0")
        if self.recipe is None:
            family = "rde" if model.memory == "rde" else "stcn"
            self.recipe = f"{family}-{self.stage}"
        if self.recipe not in PUBLISHED_RECIPES:
            raise ValueError(f"TrainConfig.recipe must be one of {sorted(PUBLISHED_RECIPES)} or None, got {self.recipe!r}")
        published = self.published_recipe
        for name in ("iterations", "batch_size", "lr", "lr_decay_at", "num_frames"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(published, name))
        self.lr_decay_at = tuple(float(f) for f in self.lr_decay_at)
        if self.bootstrap_range is not None:
            self.bootstrap_range = tuple(int(v) for v in self.bootstrap_range)
        self.rde_perturb_iou = tuple(float(v) for v in self.rde_perturb_iou)
        positive = ("iterations", "batch_size", "save_every", "log_every", "num_frames", "max_objects",
                    "davis_repeat", "synthetic_frames")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_frames < 2:
            raise ValueError(f"TrainConfig.num_frames must be >= 2 (a given and a predicted frame), "
                             f"got {self.num_frames}")
        if isinstance(self.synthetic, str):
            from remn.data.synthetic import SUITES

            if self.synthetic not in SUITES:
                raise ValueError(f"TrainConfig.synthetic must be a count >= 0 or a suite {sorted(SUITES)}, "
                                 f"got {self.synthetic!r}")
        elif self.synthetic < 0:
            raise ValueError(f"TrainConfig.synthetic must be >= 0, got {self.synthetic}")
        check_precision(self.precision, "TrainConfig.precision")
        if not 0.0 <= self.geometric_jitter <= 2.0:
            raise ValueError(f"TrainConfig.geometric_jitter must be in [0, 2], got {self.geometric_jitter}")
        if not 0.0 < self.min_crop_area <= 1.0:
            raise ValueError(f"TrainConfig.min_crop_area must be in (0, 1], got {self.min_crop_area}")
        if not 0.0 < self.bootstrap_top_p <= 1.0:
            raise ValueError(f"TrainConfig.bootstrap_top_p must be in (0, 1], got {self.bootstrap_top_p}")
        if self.bootstrap_range is not None and (len(self.bootstrap_range) != 2
                                                 or not 0 <= self.bootstrap_range[0] <= self.bootstrap_range[1]):
            raise ValueError(f"TrainConfig.bootstrap_range must be (start, end) with 0 <= start <= end, "
                             f"got {self.bootstrap_range}")
        for name in ("ce_weight", "gate_weight", "contrastive_weight", "rde_consistency_weight",
                     "rde_distillation_weight", "lr", "weight_decay", "lr_decay"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {value}")
        rde = model.memory == "rde"
        active = (self.ce_weight, self.contrastive_weight, self.gate_weight if model.gate else 0.0,
                  self.rde_consistency_weight if rde else 0.0, self.rde_distillation_weight if rde else 0.0)
        if not any(active):
            raise ValueError("every loss weight that applies to this model is 0: nothing to train")
        if len(self.rde_perturb_iou) != 2 or not 0.0 < self.rde_perturb_iou[0] <= self.rde_perturb_iou[1] <= 1.0:
            raise ValueError(f"TrainConfig.rde_perturb_iou must be (low, high) with 0 < low <= high <= 1, "
                             f"got {self.rde_perturb_iou}")
        if self.contrastive_temperature <= 0:
            raise ValueError(f"TrainConfig.contrastive_temperature must be > 0, got {self.contrastive_temperature}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"TrainConfig.clip_grad must be > 0 or None, got {self.clip_grad}")
        if not self.skip_curriculum or any(s < 1 for _, s in self.skip_curriculum):
            raise ValueError(f"TrainConfig.skip_curriculum needs (fraction, max_skip >= 1) pairs, "
                             f"got {self.skip_curriculum}")
        if self.stop_at is not None and self.stop_at < 1:
            raise ValueError(f"TrainConfig.stop_at must be >= 1 or None, got {self.stop_at}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"TrainConfig.threads must be >= 1 or None, got {self.threads}")
        if self.num_workers < 0 or self.warmup < 0:
            raise ValueError("TrainConfig.num_workers and warmup must be >= 0")

    # ------------------------------------------------------------------ derived
    @property
    def model_config(self) -> ModelConfig:
        return resolve_config(self.model)

    @property
    def stage(self) -> str:
        """"static" when static images are the only source (STCN's and RDE-VOS's stage 0),
        else "video" (their main training)."""
        videos = self.davis_root or self.youtube_root or self.synthetic
        return "static" if self.images_root is not None and not videos else "video"

    @property
    def published_recipe(self) -> PublishedRecipe:
        return PUBLISHED_RECIPES[self.recipe]

    @property
    def end_iteration(self) -> int:
        """Where this invocation stops: `stop_at` when set (capped by the run), else `iterations`."""
        return self.iterations if self.stop_at is None else min(self.stop_at, self.iterations)

    def _at(self, fraction: float) -> int:
        """The iteration a fraction of the run starts at (rounded: 125000/150000 of 150000 is 125000)."""
        return round(fraction * self.iterations)

    def lr_factor_at(self, iteration: int) -> float:
        """Multiplier of `lr` at an iteration: linear warm-up, then ×lr_decay at each `lr_decay_at`."""
        factor = 1.0 if self.warmup == 0 else min(1.0, (iteration + 1) / self.warmup)
        for fraction in self.lr_decay_at:
            if iteration >= self._at(fraction):
                factor *= self.lr_decay
        return factor

    def max_skip_at(self, iteration: int) -> int:
        """Maximum gap between consecutive sampled frames at an iteration (the curriculum)."""
        skip = self.skip_curriculum[0][1]
        for start, value in self.skip_curriculum:
            if iteration >= self._at(start):
                skip = value
        return skip

    def hard_pixel_fraction_at(self, iteration: int) -> float:
        """Fraction of the hardest pixels the bootstrapped cross-entropy keeps: 1 before the
        range, linear down to `bootstrap_top_p` across it, `bootstrap_top_p` after."""
        start, end = self.bootstrap_range or tuple(self._at(f) for f in self.published_recipe.bootstrap_fractions)
        if iteration < start:
            return 1.0
        if iteration >= end:
            return self.bootstrap_top_p
        return 1.0 - (1.0 - self.bootstrap_top_p) * (iteration - start) / (end - start)

    def to_dict(self) -> dict:
        """JSON-ready settings (paths as strings, the model config expanded)."""
        values = dataclasses.asdict(self)
        for key, value in values.items():
            if isinstance(value, Path):
                values[key] = str(value)
        values["model"] = self.model_config.to_dict()
        return values
