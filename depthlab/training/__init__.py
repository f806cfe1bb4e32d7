"""Training: the loop, checkpoints, the fast path, and reading a run directory back."""
from depthlab.recipes import RECIPES, Recipe, resolve_train
from depthlab.training.diag_schedule import validate_run
from depthlab.training.rundir import evaluate_run, load_run
from depthlab.training.trainer import build_from_config, evaluate, resolve_device, train, train_or_stop

__all__ = ["train", "train_or_stop", "evaluate", "evaluate_run", "load_run", "build_from_config", "resolve_device",
           "validate_run", "RECIPES", "Recipe", "resolve_train"]
