"""Training: the loop, recipes, checkpoints and reading a run directory back."""
from depthlab.train.loop import build_from_config, evaluate, resolve_device, train
from depthlab.train.recipes import RECIPES, Recipe, resolve_train
from depthlab.train.rundir import evaluate_run, load_run

__all__ = ["train", "evaluate", "evaluate_run", "load_run", "build_from_config", "resolve_device", "RECIPES",
           "Recipe", "resolve_train"]
