"""Training: the loop, recipes, checkpoints and re-evaluation of a run directory."""
from depthlab.train.loop import build_from_config, evaluate, evaluate_run, resolve_device, train
from depthlab.train.recipes import RECIPES, Recipe, resolve_train

__all__ = ["train", "evaluate", "evaluate_run", "build_from_config", "resolve_device", "RECIPES", "Recipe",
           "resolve_train"]
