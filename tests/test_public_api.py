"""The documented API works on its second use. ``depthlab.train`` used to be both the README's
training function and a subpackage: importing the subpackage (by the first call, or by any
``from depthlab.train import ...``) rebound ``depthlab.train`` to the module."""
import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import depthlab

ROOT = Path(__file__).resolve().parents[1]


def test_no_public_name_is_also_a_submodule_name():
    submodules = {m.name for m in pkgutil.iter_modules(depthlab.__path__)}
    assert not set(depthlab.__all__) & submodules
    assert set(depthlab.__all__) <= set(dir(depthlab))  # dir() shows the exports


SCRIPT = textwrap.dedent('''
    import json, sys
    import depthlab

    out, calls = sys.argv[1], []
    tiny = ["model.name=resnet", "model.depth=8", "model.width=4", "train.epochs=1", "train.device=cpu",
            f"out_dir={out}/runs"]

    def twice(name, fn):
        fn(); fn()
        calls.append(name)

    # every README entry point, each called twice, in one interpreter, each after the others
    twice("list_models", lambda: depthlab.list_models())
    twice("build_model", lambda: depthlab.build_model("plain", depth=110, in_channels=1))
    twice("count_params", lambda: depthlab.count_params(depthlab.build_model("resnet56")))
    twice("load_dataset", lambda: depthlab.load_dataset("digits"))
    twice("list_datasets", lambda: depthlab.list_datasets())
    twice("RunConfig", lambda: depthlab.RunConfig().with_overrides(["model.name=plain56"]))
    runs = iter(["a", "b"])
    twice("train", lambda: depthlab.train(depthlab.RunConfig().with_overrides(tiny + [f"run_id={next(runs)}"]),
                                          quiet=True))
    from depthlab.training import load_run  # importing the training package must not shadow train
    twice("train again", lambda: depthlab.train(depthlab.RunConfig().with_overrides(tiny + ["run_id=a"]),
                                                resume=True, quiet=True))
    twice("evaluate_run", lambda: depthlab.evaluate_run(f"{out}/runs/a", device="cpu"))
    model = depthlab.build_model("resnet", depth=8, width=4, in_channels=1)
    twice("diagnose model", lambda: depthlab.diagnose(model, ["gradient_flow"], data=depthlab.load_dataset("digits")))
    twice("diagnose run", lambda: depthlab.diagnose(f"{out}/runs/a", ["responses"], device="cpu"))
    twice("list_experiments", lambda: depthlab.list_experiments())
    twice("reproduce", lambda: depthlab.reproduce("shattered", seeds=1, params=depthlab.experiments.EXPERIMENTS.get(
        "shattered").smoke, out=f"{out}/shattered", quiet=True))
    twice("write_report", lambda: depthlab.write_report(f"{out}/runs/a"))
    twice("train last", lambda: depthlab.train(depthlab.RunConfig().with_overrides(tiny + ["run_id=a"]),
                                               resume=True, quiet=True))
    assert callable(depthlab.train) and callable(depthlab.diagnose)
    print(json.dumps(calls))
''')


def test_every_readme_entry_point_works_twice_in_one_fresh_interpreter(tmp_path):
    script = tmp_path / "api.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    calls = json.loads(out.stdout.splitlines()[-1])
    assert calls[-1] == "train last" and len(calls) == 15
