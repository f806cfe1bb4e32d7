"""``depthlab.diagnose``: run quantities on a model, or on a run directory's checkpoint (whose
records go to its ``diagnostics.jsonl``). It sits above training: a run directory's model is
rebuilt by the trainer's own ``load_run``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional

from depthlab.config import ConfigError
from depthlab.diagnostics import run_quantities
from depthlab.diagnostics.runner import resolve_quantities
from depthlab.fileio import read_jsonl, read_jsonl_checked, write_jsonl
from depthlab.training import load_run
from depthlab.training.rundir import steps_per_epoch

log = logging.getLogger("depthlab")


def diagnose(model_or_run_dir, quantities="all", data=None, *, checkpoint: str = "last", device: str = "auto",
             options: Optional[Dict[str, dict]] = None, write: bool = True) -> List[dict]:
    """Run ``quantities`` on a model (``data`` required) or on a run directory's checkpoint.

    With ``quantities="all"`` a quantity the model cannot support (paths on a plain net, responses
    without BN) is skipped with one logged line; named explicitly, its ValueError is raised.
    ``options`` maps a quantity to its keyword options, e.g. ``{"lesion": {"max_k": 5}}``. For a
    run directory the records get the checkpoint's ``step`` and go to its ``diagnostics.jsonl``
    (unless ``write=False``), replacing what an earlier ``diagnose`` of the same checkpoint and
    quantities wrote there: diagnosing twice does not duplicate records."""
    if not isinstance(model_or_run_dir, (str, Path)):
        if data is None:
            raise ValueError("diagnose(model, ...) needs data= (a depthlab Dataset); a run directory brings its own")
        return run_quantities(model_or_run_dir, data, quantities, options)
    names = resolve_quantities(quantities)
    run_dir = Path(model_or_run_dir)
    model, data, cfg, epoch, _ = load_run(run_dir, checkpoint=checkpoint, device=device)
    step = epoch * steps_per_epoch(cfg, data)
    out = [{"step": step, "checkpoint": checkpoint, **r} for r in run_quantities(model, data, quantities, options)]
    if write:
        path = run_dir / "diagnostics.jsonl"
        kept = [r for r in _rows_to_rewrite(path)
                if not (r.get("checkpoint") == checkpoint and r.get("step") == step and r.get("quantity") in names)]
        write_jsonl(path, kept + out)
    return out


def _rows_to_rewrite(path: Path) -> List[dict]:
    """The rows of ``diagnostics.jsonl`` before ``diagnose`` rewrites it: a torn last line (a write
    cut short) is dropped with a warning; a damaged line elsewhere stops it (rewriting would lose
    that line without a word), naming file:line."""
    rows, damage = read_jsonl_checked(path)
    bad = next((d for d in damage if not d.torn), None)
    if bad is not None:
        raise ConfigError(f"{bad}; diagnose rewrites this file and would lose that line: repair or remove the line, "
                          f"or restore the file from a backup")
    for d in damage:
        log.warning("%s; dropped it", d)
    return rows


def read_diagnostics(run_dir) -> List[dict]:
    return read_jsonl(Path(run_dir) / "diagnostics.jsonl")
