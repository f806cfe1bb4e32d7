"""``depthlab.diagnose`` on a run directory writes each checkpoint's records once, however often it
is run, and keeps what training wrote."""
import json

from depthlab.config import RunConfig
from depthlab.diagnose_run import diagnose, read_diagnostics
from depthlab.training import train


def test_diagnosing_twice_replaces_the_records_instead_of_appending_them_again(tmp_path):
    cfg = RunConfig().with_overrides(["model.name=resnet", "model.depth=8", "model.width=4", "train.epochs=1",
                                      "train.device=cpu", "diagnostics.quantities=orthonormality@1",
                                      f"out_dir={tmp_path}", "run_id=r"])
    train(cfg, quiet=True)
    during = read_diagnostics(cfg.run_dir)
    assert during and all("checkpoint" not in r for r in during)
    first = diagnose(cfg.run_dir, ["responses", "orthonormality"], device="cpu")
    diagnose(cfg.run_dir, ["responses", "orthonormality"], device="cpu")
    diagnose(cfg.run_dir, ["orthonormality"], device="cpu")
    rows = read_diagnostics(cfg.run_dir)
    assert rows == during + json.loads(json.dumps(first))  # once each, training's rows untouched
    init = diagnose(cfg.run_dir, ["responses"], checkpoint="init", device="cpu")
    assert read_diagnostics(cfg.run_dir)[len(rows):] == json.loads(json.dumps(init))  # another checkpoint: added
