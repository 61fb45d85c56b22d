"""`remn train` / `python -m remn.train`: flags map onto `TrainConfig`.

Flags left out take the published recipe of the run (`remn.train.config.PUBLISHED_RECIPES`:
STCN's, or RDE-VOS's for --config rde; its static-image stage when --images-root is the
only source, its main video stage otherwise): iterations, batch size, learning rate and
decay, frames per clip, the hard-pixel schedule. BatchNorm is frozen and CUDA trains in
mixed precision, as both papers do.

Stage 0 (static images):  remn train --config remn --images-root STATIC \\
                              --imagenet-resnet50 r50.pth --imagenet-resnet18 r18.pth --output runs/s0
Stage 1 (videos):         remn train --config remn --davis-root DAVIS --youtube-root YTVOS \\
                              --init-weights runs/s0/model.pt --output runs/s1
Synthetic smoke run:      remn train --config tiny --synthetic 16 --iterations 200 --lr 1e-3 \\
                              --train-batchnorm --output runs/t
Several GPUs:             torchrun --nproc_per_node=2 -m remn.train --config remn ... (same flags)

--images-root ROOT reads ROOT/images/NAME.jpg|png with ROOT/masks/NAME.png (see remn.train.clips).
"""
from __future__ import annotations

import argparse
import sys

from remn.config import PRESETS
from remn.precision import PRECISIONS
from remn.train.config import PUBLISHED_RECIPES, TrainConfig


def _default(name: str):
    """TrainConfig's default for a field, shown in the help; the flag itself defaults to None
    so that only flags given on the command line reach TrainConfig."""
    return TrainConfig.__dataclass_fields__[name].default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    data = parser.add_argument_group("data (at least one source)")
    data.add_argument("--davis-root", metavar="ROOT",
                      help="DAVIS layout (JPEGImages/480p, Annotations/480p, ImageSets)")
    data.add_argument("--davis-split", help=f"DAVIS split to train on (default: {_default('davis_split')})")
    data.add_argument("--davis-year", type=int, choices=(2016, 2017), help=f"default: {_default('davis_year')}")
    data.add_argument("--youtube-root", metavar="ROOT", help="YouTube-VOS layout (train/JPEGImages, train/Annotations)")
    data.add_argument("--images-root", metavar="ROOT",
                      help="static images: ROOT/images/*.jpg|png and ROOT/masks/*.png, same stems")
    data.add_argument("--synthetic", type=_synthetic, metavar="N|SUITE",
                      help="write N synthetic sequences to OUTPUT/data and train on them; or a suite's train split "
                           "(hard: twins, still stretches, occlusion), whose recipe (remn.train.trainer.SUITE_RECIPES) "
                           "then sets the defaults")
    data.add_argument("--synthetic-size", type=int, nargs=2, metavar=("H", "W"),
                      help=f"default: {' '.join(map(str, _default('synthetic_size')))}")
    data.add_argument("--num-workers", type=int, help=f"data loading processes per rank (default {_default('num_workers')})")
    data.add_argument("--threads", type=int, help="CPU threads for training (default: PyTorch's choice)")

    run = parser.add_argument_group("run")
    run.add_argument("--config", dest="model", choices=sorted(PRESETS),
                     help=f"model preset (default: {_default('model')})")
    run.add_argument("--recipe", choices=sorted(PUBLISHED_RECIPES),
                     help="the published recipe the defaults come from (default: from --config and the data)")
    run.add_argument("--iterations", type=int, help="optimiser steps of the whole schedule (default: the recipe's)")
    run.add_argument("--output", required=True, metavar="RUN_DIR", help="run folder: last.pt, model.pt, log.jsonl")
    run.add_argument("--resume", metavar="RUN_DIR/last.pt", help="continue a run bit for bit from its checkpoint")
    run.add_argument("--init-weights", metavar="PATH", help="start from these weights (e.g. stage 0's model.pt)")
    run.add_argument("--imagenet-resnet50", metavar="PATH", help="torchvision ResNet-50 weights for the key encoder")
    run.add_argument("--imagenet-resnet18", metavar="PATH", help="torchvision ResNet-18 weights for the value encoder")
    run.add_argument("--stop-at", type=int, metavar="ITER", help="stop (with a checkpoint) at this iteration")
    run.add_argument("--save-every", type=int, metavar="K",
                     help=f"checkpoint every K iterations (default {_default('save_every')})")
    run.add_argument("--log-every", type=int, metavar="K", help=f"default: {_default('log_every')}")
    run.add_argument("--seed", type=int, help=f"default: {_default('seed')}")
    run.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when available; LOCAL_RANK under torchrun)")
    run.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no tqdm bar")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch-size", type=int, help="clips per process and step (default: the recipe's, 4 for video)")
    optim.add_argument("--lr", type=float, help="Adam learning rate (default: the recipe's, STCN 1e-5, RDE-VOS 2e-5)")
    optim.add_argument("--weight-decay", type=float, help=f"default: {_default('weight_decay')}")
    optim.add_argument("--warmup", type=int, help=f"linear warm-up iterations (default {_default('warmup')})")
    optim.add_argument("--clip-grad", type=float, metavar="NORM", help="clip the global gradient norm")
    optim.add_argument("--precision", choices=PRECISIONS,
                       help=f"mixed precision (default {_default('precision')}: bf16 on CUDA, fp16 with a grad scaler "
                            "without bf16, fp32 on the CPU); fp32 for full precision everywhere")
    optim.add_argument("--train-batchnorm", dest="freeze_batchnorm", action="store_false", default=None,
                       help="let BatchNorm update its statistics (training from scratch); the published recipes "
                            "freeze it")

    clips = parser.add_argument_group("clips and losses")
    clips.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"),
                       help=f"default: {' '.join(map(str, _default('crop_size')))}")
    clips.add_argument("--num-frames", type=int, help="frames per clip (default: the recipe's, STCN 3, RDE-VOS 5)")
    clips.add_argument("--max-objects", type=int, help=f"default: {_default('max_objects')}")
    clips.add_argument("--ce-weight", type=float, help=f"default: {_default('ce_weight')}")
    clips.add_argument("--bootstrap-top-p", type=float,
                       help=f"final fraction of the hardest pixels in the cross-entropy (default {_default('bootstrap_top_p')})")
    clips.add_argument("--bootstrap-range", type=int, nargs=2, metavar=("START", "END"),
                       help="iterations over which that fraction anneals from 1 (default: the recipe's, "
                            "20K → 70K of STCN's 150K scaled to the run)")
    clips.add_argument("--gate-weight", type=float, help=f"gate term weight, 0: off (default {_default('gate_weight')})")
    clips.add_argument("--contrastive-weight", type=float,
                       help=f"key contrastive term weight, 0: off (default {_default('contrastive_weight')})")
    clips.add_argument("--rde-consistency-weight", type=float,
                       help="RDE models: KL(true-mask values || perturbed-mask values) weight, 0: off "
                            f"(default {_default('rde_consistency_weight')})")
    clips.add_argument("--rde-distillation-weight", type=float,
                       help="RDE models: KL(full-memory readout || embedding readout) weight, 0: off "
                            f"(default {_default('rde_distillation_weight')})")


TUPLE_FIELDS = ("synthetic_size", "crop_size", "bootstrap_range")


def _synthetic(text: str):
    """--synthetic: a count, or a suite name."""
    from remn.data.synthetic import SUITES

    if text in SUITES:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a suite {sorted(SUITES)}, got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the flags given; every other field keeps TrainConfig's default, or
    the suite recipe's with --synthetic SUITE."""
    from remn.train.trainer import suite_recipe

    given = {name: value for name, value in vars(args).items() if value is not None}
    for name in TUPLE_FIELDS:
        if name in given:
            given[name] = tuple(given[name])
    recipe = suite_recipe(given.get("synthetic"), given.get("model"))  # only a suite name has one
    return TrainConfig(**{**recipe, **given})


def run(args: argparse.Namespace) -> int:
    from remn.train.trainer import TrainingDiverged, train

    try:
        config = config_from_args(args)
        weights = train(config)
    except (ValueError, FileNotFoundError, TrainingDiverged) as err:
        print(f"remn train: error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, TrainingDiverged) else 3
    print(f"weights: {weights}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m remn.train", description="train REMN")
    add_arguments(parser)
    return run(parser.parse_args(argv))
