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
from remn.train.config import AMP_MODES, PUBLISHED_RECIPES, TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    data = parser.add_argument_group("data (at least one source)")
    data.add_argument("--davis-root", metavar="ROOT",
                      help="DAVIS layout (JPEGImages/480p, Annotations/480p, ImageSets)")
    data.add_argument("--davis-split", default="train", help="DAVIS split to train on (default: train)")
    data.add_argument("--davis-year", type=int, default=2017, choices=(2016, 2017))
    data.add_argument("--youtube-root", metavar="ROOT", help="YouTube-VOS layout (train/JPEGImages, train/Annotations)")
    data.add_argument("--images-root", metavar="ROOT",
                      help="static images: ROOT/images/*.jpg|png and ROOT/masks/*.png, same stems")
    data.add_argument("--synthetic", type=int, default=0, metavar="N",
                      help="write N synthetic sequences to OUTPUT/data and train on them")
    data.add_argument("--synthetic-size", type=int, nargs=2, default=(64, 96), metavar=("H", "W"))
    data.add_argument("--num-workers", type=int, default=0, help="data loading processes per rank (default 0)")
    data.add_argument("--threads", type=int, help="CPU threads for training (default: PyTorch's choice)")

    run = parser.add_argument_group("run")
    run.add_argument("--config", default="remn", choices=sorted(PRESETS), help="model preset (default: remn)")
    run.add_argument("--recipe", choices=sorted(PUBLISHED_RECIPES),
                     help="the published recipe the defaults come from (default: from --config and the data)")
    run.add_argument("--iterations", type=int, help="optimiser steps of the whole schedule (default: the recipe's)")
    run.add_argument("--output", required=True, metavar="RUN_DIR", help="run folder: last.pt, model.pt, log.jsonl")
    run.add_argument("--resume", metavar="RUN_DIR/last.pt", help="continue a run bit for bit from its checkpoint")
    run.add_argument("--init-weights", metavar="PATH", help="start from these weights (e.g. stage 0's model.pt)")
    run.add_argument("--imagenet-resnet50", metavar="PATH", help="torchvision ResNet-50 weights for the key encoder")
    run.add_argument("--imagenet-resnet18", metavar="PATH", help="torchvision ResNet-18 weights for the value encoder")
    run.add_argument("--stop-at", type=int, metavar="ITER", help="stop (with a checkpoint) at this iteration")
    run.add_argument("--save-every", type=int, default=1000, metavar="K", help="checkpoint every K iterations")
    run.add_argument("--log-every", type=int, default=10, metavar="K")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when available; LOCAL_RANK under torchrun)")
    run.add_argument("--no-progress", action="store_true", help="no tqdm bar")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch-size", type=int, help="clips per process and step (default: the recipe's, 4 for video)")
    optim.add_argument("--lr", type=float, help="Adam learning rate (default: the recipe's, STCN 1e-5, RDE-VOS 2e-5)")
    optim.add_argument("--weight-decay", type=float, default=1e-7)
    optim.add_argument("--warmup", type=int, default=0, help="linear warm-up iterations")
    optim.add_argument("--clip-grad", type=float, metavar="NORM", help="clip the global gradient norm")
    optim.add_argument("--amp", nargs="?", const="auto", default="auto", choices=AMP_MODES,
                       help="mixed precision (default auto: bf16 on CUDA, fp16 with a grad scaler without bf16, "
                            "full precision on the CPU); --amp off for full precision everywhere")
    optim.add_argument("--train-batchnorm", action="store_true",
                       help="let BatchNorm update its statistics (training from scratch); the published recipes "
                            "freeze it")

    clips = parser.add_argument_group("clips and losses")
    clips.add_argument("--crop-size", type=int, nargs=2, default=(384, 384), metavar=("H", "W"))
    clips.add_argument("--num-frames", type=int, help="frames per clip (default: the recipe's, STCN 3, RDE-VOS 5)")
    clips.add_argument("--max-objects", type=int, default=2)
    clips.add_argument("--ce-weight", type=float, default=1.0)
    clips.add_argument("--bootstrap-top-p", type=float, default=0.15,
                       help="final fraction of the hardest pixels in the cross-entropy")
    clips.add_argument("--bootstrap-range", type=int, nargs=2, metavar=("START", "END"),
                       help="iterations over which that fraction anneals from 1 (default: the recipe's, "
                            "20K → 70K of STCN's 150K scaled to the run)")
    clips.add_argument("--gate-weight", type=float, default=0.1, help="gate term weight (0: off)")
    clips.add_argument("--contrastive-weight", type=float, default=0.0, help="key contrastive term weight (0: off)")
    clips.add_argument("--rde-consistency-weight", type=float, default=10.0,
                       help="RDE models: KL(true-mask values || perturbed-mask values) weight (0: off)")
    clips.add_argument("--rde-distillation-weight", type=float, default=10.0,
                       help="RDE models: KL(full-memory readout || embedding readout) weight (0: off)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        output=args.output, model=args.config, recipe=args.recipe, iterations=args.iterations,
        davis_root=args.davis_root, davis_split=args.davis_split, davis_year=args.davis_year,
        youtube_root=args.youtube_root, images_root=args.images_root,
        synthetic=args.synthetic, synthetic_size=tuple(args.synthetic_size),
        num_workers=args.num_workers, threads=args.threads,
        resume=args.resume, init_weights=args.init_weights,
        imagenet_resnet50=args.imagenet_resnet50, imagenet_resnet18=args.imagenet_resnet18,
        stop_at=args.stop_at, save_every=args.save_every, log_every=args.log_every, seed=args.seed,
        device=args.device, progress=not args.no_progress,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
        clip_grad=args.clip_grad, amp=args.amp, freeze_batchnorm=not args.train_batchnorm,
        crop_size=tuple(args.crop_size), num_frames=args.num_frames, max_objects=args.max_objects,
        ce_weight=args.ce_weight, bootstrap_top_p=args.bootstrap_top_p,
        bootstrap_range=None if args.bootstrap_range is None else tuple(args.bootstrap_range),
        gate_weight=args.gate_weight, contrastive_weight=args.contrastive_weight,
        rde_consistency_weight=args.rde_consistency_weight, rde_distillation_weight=args.rde_distillation_weight,
    )


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
