"""Training CTC models: the loop, its recipe, schedules, checkpoints and multi-process training.

    from slimasr.train import train_model, load_frontend
    metrics = train_model("recipes/train_crnn_teacher.yaml", "data/smarthome", "exp/teacher")
    frontend = load_frontend("exp/teacher")       # slimasr.frontend.Frontend
"""

from slimasr.train.checkpoint import load_checkpoint, save_checkpoint
from slimasr.train.config import (
    ModelSpec,
    TokenizerConfig,
    TrainConfig,
    TrainRecipe,
    load_recipe,
    resolve_model,
)
from slimasr.train.loop import train_model
from slimasr.train.prepare import load_frontend
from slimasr.train.schedule import LrSchedule, lr_at

__all__ = [
    "LrSchedule", "ModelSpec", "TokenizerConfig", "TrainConfig", "TrainRecipe",
    "load_checkpoint", "load_frontend", "load_recipe", "lr_at", "resolve_model",
    "save_checkpoint", "train_model",
]
