"""degradation experiment (He et al. 2015): end to end with its smoke parameters (two depths, so the
shallow/deep pair is two different runs), each verdict's numbers and status recomputed from the run
directories and the response measurement. tests/test_reproduce.py runs it for the framework (reuse,
resume, seeds, paper scale) and checks its verdicts with ``check_verdicts`` from here."""
import expcheck as ec

from depthlab.experiments.degradation import Degradation
from depthlab.experiments.runner import reproduce


def check_verdicts(out, doc):
    """Every verdict's numbers (mean +- sd over the seeds) and status, recomputed from each run's last
    metrics row (training error = 1 - training accuracy; a diverged run is missing) and the per-layer
    response stds in measurements/responses.json (their mean taken here)."""
    p, seeds = doc["params"], range(doc["seeds"])
    depths = p["depths"]
    lo, hi = (20, 56) if {20, 56} <= set(depths) else (depths[0], depths[-1])
    deepest = depths[-1]
    runs = {(f, d): [ec.find_run(out, seed=s, name=f, depth=d) for s in seeds] for f in ("plain", "resnet")
            for d in depths}
    err = {k: [1 - ec.acc(out, r) for r in rs] for k, rs in runs.items()}
    resp = ec.measurement(out, "responses")
    std = {k: [sum(resp[r]["std"]) / len(resp[r]["std"]) for r in rs if r in resp] for k, rs in runs.items()}
    ec.check(ec.verdict(doc, f"plain-{hi} has a higher training error than plain-{lo}"),
             ec.rule(err[("plain", hi)], err[("plain", lo)], p["gap"]),
             f"plain-{lo} {ec.pct(err[('plain', lo)])}, plain-{hi} {ec.pct(err[('plain', hi)])} training error")
    ec.check(ec.verdict(doc, f"resnet-{hi} trains at least as well as resnet-{lo}"),
             ec.rule(err[("resnet", lo)], err[("resnet", hi)], -p["tolerance"]),
             f"resnet-{lo} {ec.pct(err[('resnet', lo)])}, resnet-{hi} {ec.pct(err[('resnet', hi)])} training error")
    for a, b in zip(depths, depths[1:]):  # every other step of the grid
        if (a, b) != (lo, hi):
            ec.check(ec.verdict(doc, f"resnet-{b} trains at least as well as resnet-{a}"),
                     ec.rule(err[("resnet", a)], err[("resnet", b)], -p["tolerance"]),
                     f"resnet-{a} {ec.pct(err[('resnet', a)])}, resnet-{b} {ec.pct(err[('resnet', b)])} training error")
    ec.check(ec.verdict(doc, f"resnet-{hi}'s branch responses"), ec.rule(std[("plain", hi)], std[("resnet", hi)], 0.0),
             f"mean std over layers: plain {ec.fmt(std[('plain', hi)], digits=3)}, resnet "
             f"{ec.fmt(std[('resnet', hi)], digits=3)}")
    ec.check(ec.verdict(doc, f"the deeper resnet-{deepest} has smaller responses"),
             ec.rule(std[("resnet", lo)], std[("resnet", deepest)], 0.0),
             f"mean std over layers: resnet-{lo} {ec.fmt(std[('resnet', lo)], digits=3)}, resnet-{deepest} "
             f"{ec.fmt(std[('resnet', deepest)], digits=3)}")
    return {"err": err, "std": std, "lo": lo, "hi": hi}


def test_end_to_end_verdicts_compare_the_shallow_and_deep_runs_they_name(tmp_path):
    doc = reproduce("degradation", seeds=1, params=Degradation.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").stat().st_size > 1000
    assert len(doc["verdicts"]) == 4  # two depths: one step, the shallow/deep pair itself
    numbers = check_verdicts(tmp_path, doc)
    assert (numbers["lo"], numbers["hi"]) == (8, 14)  # smoke depths: no 20/56 pair, so the shallowest and deepest
    rows = {r[0]: r for r in doc["tables"][0]["rows"]}
    for (fam, d), err in numbers["err"].items():
        assert rows[f"{fam}-{d}"][2] == ec.pct(err)


def test_every_step_of_a_longer_grid_checks_the_resnet(tmp_path):
    doc = reproduce("degradation", seeds=1, params={**Degradation.smoke, "depths": [8, 14, 20]}, out=str(tmp_path),
                    quiet=True, report=False)
    claims = [v["claim"] for v in doc["verdicts"]]
    assert any(c.startswith("resnet-20 trains at least as well as resnet-8") for c in claims)  # shallowest/deepest
    assert any(c.startswith("resnet-14 trains at least as well as resnet-8") for c in claims)
    assert any(c.startswith("resnet-20 trains at least as well as resnet-14") for c in claims)
    check_verdicts(tmp_path, doc)
