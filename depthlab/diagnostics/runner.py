"""``diagnose``: run quantities on a model or on a run directory's checkpoint."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

from depthlab.diagnostics.registry import DIAGNOSTICS


def resolve_quantities(quantities: Union[str, Iterable[str], None]) -> List[str]:
    """``"all"``/None -> every registered quantity; ``"a,b"`` or a list -> validated names."""
    if quantities is None or quantities == "all":
        return DIAGNOSTICS.names()
    names = [q.strip() for q in quantities.split(",")] if isinstance(quantities, str) else list(quantities)
    for q in names:
        DIAGNOSTICS.get(q)  # an unknown name lists the valid ones
    return names


def load_run(run_dir, checkpoint: str = "last", device: str = "auto"):
    """(model, dataset, step, config) for a run directory's checkpoint, model in eval mode."""
    from depthlab.config import ConfigError, RunConfig
    from depthlab.data import load_dataset
    from depthlab.train import build_from_config, resolve_device
    from depthlab.train import checkpoint as ckpt

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no config.json)")
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    dev = resolve_device(device)
    data = load_dataset(cfg.data.name, data_dir=cfg.data.data_dir, seed=cfg.data.seed,
                        val_fraction=cfg.data.val_fraction, download=cfg.data.download).to(dev)
    model = build_from_config(cfg, data).to(dev)
    step = 0
    if checkpoint != "init":
        path = (ckpt.latest_checkpoint(run_dir / "checkpoints") if checkpoint == "last"
                else run_dir / "checkpoints" / ("best.pt" if checkpoint == "best" else checkpoint))
        if path is None or not Path(path).exists():
            raise ConfigError(f"no {checkpoint!r} checkpoint in {str(run_dir / 'checkpoints')!r} "
                              f"(use checkpoint='init' for the model at initialisation)")
        state = ckpt.load_checkpoint(path, map_location=dev)
        model.load_state_dict(state["model"])
        step = int(state["epoch"]) * _steps_per_epoch(cfg, data)
    return model.eval(), data, step, cfg


def _steps_per_epoch(cfg, data) -> int:
    bs = cfg.train.batch_size or 1
    return -(-len(data.train_x) // bs)


def diagnose(model_or_run_dir, quantities="all", data=None, *, checkpoint: str = "last", device: str = "auto",
             options: Optional[Dict[str, dict]] = None, write: bool = True) -> List[dict]:
    """Run ``quantities`` on a model (``data`` required) or on a run directory's checkpoint.

    With ``quantities="all"`` a quantity the model cannot support (paths on a plain net, responses
    without BN) is skipped with a warning; named explicitly, its ValueError is raised.

    ``options`` maps a quantity to its keyword options, e.g. ``{"lesion": {"max_k": 5}}``. For a run
    directory the records get the checkpoint's ``step`` and are appended to its
    ``diagnostics.jsonl`` (unless ``write=False``)."""
    names = resolve_quantities(quantities)
    skip_inapplicable = quantities is None or quantities == "all"
    options = options or {}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"options given for quantities not requested: {', '.join(unknown)}")
    run_dir, step = None, None
    if isinstance(model_or_run_dir, (str, Path)):
        run_dir = Path(model_or_run_dir)
        model, data, step, _ = load_run(run_dir, checkpoint=checkpoint, device=device)
    else:
        model = model_or_run_dir
        if data is None:
            raise ValueError("diagnose(model, ...) needs data= (a depthlab Dataset); a run directory brings its own")
    out = []
    for q in names:
        try:
            recs = DIAGNOSTICS.get(q)(model, data, **options.get(q, {}))
        except ValueError as e:
            if not skip_inapplicable:  # asked for by name: its error is the answer
                raise
            warnings.warn(f"diagnostic {q!r} skipped: {e}", stacklevel=2)  # e.g. paths on a plain net
            continue
        for r in recs:
            if step is not None:
                r = {"step": step, "checkpoint": checkpoint, **r}
            out.append(r)
    if run_dir is not None and write:
        with open(run_dir / "diagnostics.jsonl", "a") as f:
            for r in out:
                f.write(json.dumps(r) + "\n")
    return out


def read_diagnostics(run_dir) -> List[dict]:
    path = Path(run_dir) / "diagnostics.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
