"""Sweeps: a YAML grid of run configs (any config keys) x seeds, run by a local process pool or on
Ray, with finished runs skipped, interrupted ones resumed, failures recorded, and one aggregated
table (mean +- sd over seeds). See ``depthlab.sweep.spec`` for the file format and docs/sweeps.md.

    from depthlab.sweep import run_sweep
    doc = run_sweep("sweep.yaml", workers=2)          # or a dict with the same keys
    doc["table"], doc["paths"]["html"]

With the ``local`` executor, a script that calls ``run_sweep`` must guard it with
``if __name__ == "__main__":`` (workers are spawned, and re-import the main module).
"""
from depthlab.sweep.ids import grid_points, point_id, point_ids, run_id
from depthlab.sweep.run import Plan, plan_sweep, run_sweep
from depthlab.sweep.spec import PlannedRun, SweepSpec, expand, load_spec

__all__ = ["run_sweep", "plan_sweep", "Plan", "load_spec", "expand", "grid_points", "point_id", "point_ids", "run_id",
           "SweepSpec", "PlannedRun"]
