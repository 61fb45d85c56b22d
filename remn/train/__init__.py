"""Training REMN: static-image pretraining (stage 0) and video training (stage 1).

    from remn.train import TrainConfig, train
    weights = train(TrainConfig(output="runs/tiny", model="tiny", synthetic=16, iterations=200, lr=1e-3))
    model = remn.build_model(config="tiny", weights=weights)

Modules: `config` (TrainConfig and its schedules), `clips` (samples and the sharded
sampler), `augment`, `losses`, `trainer` (the loop, checkpoints, the learning check),
`cli` (`remn train`). torchrun and DDP: `remn.distributed`, shared with `remn segment`.
"""
from remn.train.config import TrainConfig
from remn.train.trainer import LEARNING_RECIPE, LearningCheck, TrainingDiverged, learning_check, train

__all__ = ["TrainConfig", "train", "learning_check", "LearningCheck", "LEARNING_RECIPE", "TrainingDiverged"]
