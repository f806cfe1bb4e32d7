"""``diagnose``: run quantities on a model or on a run directory's checkpoint."""
from __future__ import annotations

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


def _steps_per_epoch(cfg, data) -> int:
    return -(-len(data.train_x) // (cfg.train.batch_size or 1))


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
        from depthlab.train import load_run

        run_dir = Path(model_or_run_dir)
        model, data, cfg, epoch, _ = load_run(run_dir, checkpoint=checkpoint, device=device)
        step = epoch * _steps_per_epoch(cfg, data)
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
        from depthlab.train.checkpoint import append_jsonl

        append_jsonl(run_dir / "diagnostics.jsonl", out)
    return out


def read_diagnostics(run_dir) -> List[dict]:
    from depthlab.train.checkpoint import read_jsonl

    return read_jsonl(Path(run_dir) / "diagnostics.jsonl")
