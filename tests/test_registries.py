"""Every registered model family, training method and experiment gets a smoke test without a test
file being edited (diagnostics: tests/test_diagnose.py, parametrised over DIAGNOSTICS), and the
registries cannot drift: a plug-in module that fails to import is an error, not a skip."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from stops import StopAfter

import depthlab.training.trainer as loop
from depthlab.config import ConfigError, RunConfig
from depthlab.experiments import EXPERIMENTS, reproduce
from depthlab.experiments.base import INCONCLUSIVE, NOT_OBSERVED, OBSERVED
from depthlab.experiments.runner import resolve_params
from depthlab.methods import METHODS
from depthlab.models import FAMILIES, build_model
from depthlab.training import build_from_config, load_run, train, validate_run
from depthlab.training.checkpoint import latest_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", FAMILIES.names())
def test_every_family_builds_small_trains_a_step_and_keeps_the_contract(family):
    torch.manual_seed(0)
    layout = FAMILIES.meta(family)["layout"]
    small = {"width": 4} if layout != "imagenet" else {"width": 2}
    model = build_model(family, in_channels=1, num_classes=3, **small)
    x = torch.randn(2, 1, 16, 16) if layout != "mnist" else torch.randn(2, 1, 8, 8)
    out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert len(model.blocks) > 0 and list(model.taps())
    assert all(hasattr(b, a) for b in model.blocks for a in ("enabled", "survival_prob", "has_shortcut"))


def _cfg(tmp_path, run_id, *overrides):
    return RunConfig().with_overrides([
        "model.name=resnet", "model.depth=8", "model.width=4", "data.name=digits", "train.epochs=1",
        "train.batch_size=128", "train.device=cpu", f"out_dir={tmp_path}", f"run_id={run_id}", *overrides])


def _on(method):
    return [f"methods.{k}={v}" for k, v in METHODS.get(method).example.items()]


class _StopAfter(StopAfter):
    n = 7  # of the 12 training steps (1437 digits, batch 128)


def _weights(cfg):
    return load_checkpoint(latest_checkpoint(cfg.run_dir / "checkpoints"))["model"]


@pytest.fixture(scope="module")
def without_methods(tmp_path_factory):
    return train(_cfg(tmp_path_factory.mktemp("plain"), "plain"), quiet=True)


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_switches_on_trains_and_resumes_bit_for_bit(method, tmp_path, monkeypatch, without_methods):
    cls = METHODS.get(method)
    assert cls.title and cls.source and cls.example, f"{method}: title, source and example are required"
    straight = _cfg(tmp_path, "straight", *cls.example_model, *_on(method))
    assert cls.enabled(straight.methods)
    s = train(straight, quiet=True)
    assert s["status"] == "finished" and s["train_loss"] == s["train_loss"]  # finite, not NaN
    if cls.example_model or cls.example_off:  # the same model with the method changing nothing
        off = [f"methods.{k}={v}" for k, v in cls.example_off.items()]
        without = train(_cfg(tmp_path, "without", *cls.example_model, *off), quiet=True)
    else:
        without = without_methods
    assert s["train_loss"] != without["train_loss"]  # the method changed training

    stopped = _cfg(tmp_path, "stopped", *cls.example_model, *_on(method))
    monkeypatch.setattr(loop, "StopSignals", _StopAfter)
    assert train(stopped, quiet=True)["status"] == "interrupted"
    monkeypatch.undo()
    assert train(stopped, resume=True, quiet=True)["status"] == "finished"
    a, b = _weights(straight), _weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_options_are_config_keys_with_their_declared_defaults():
    cfg = RunConfig()
    for name in METHODS:
        for key, option in METHODS.get(name).options.items():
            assert getattr(cfg.methods, key) == option.default
        # every method is off by default, but one that declares it acts on its own models only
        assert METHODS.get(name).enabled(cfg.methods) == METHODS.get(name).on_by_default, name
    assert [n for n in METHODS if METHODS.get(n).on_by_default] == ["fixup_lr"]


def test_a_declared_conflict_is_refused_naming_both_keys(monkeypatch):
    monkeypatch.setattr(METHODS.get("clip_grad_norm"), "conflicts", ("stochastic_depth",))
    cfg = RunConfig().with_overrides(_on("clip_grad_norm") + _on("stochastic_depth"))
    with pytest.raises(ConfigError, match="methods.clip_grad_norm cannot be combined with methods.stochastic_depth"):
        cfg.validate()


PLUGIN = textwrap.dedent('''
    """A training method written outside depthlab: counts its steps; the count is its state."""
    import json, sys
    import torch
    from depthlab.methods import Option, TrainingMethod, register

    @register
    class StepCounter(TrainingMethod):
        name = "step_counter"
        title, source = "counts steps", "a test"
        options = {"step_counter": Option(bool, False, "count steps")}
        example = {"step_counter": True}

        def setup(self, model):
            self.steps = torch.zeros((), dtype=torch.long)

        def after_backward(self, model, step):
            assert int(self.steps) == step, (int(self.steps), step)  # resumes exactly where it stopped
            self.steps += 1

        def state_dict(self):
            return {"steps": self.steps.clone()}

        def load_state_dict(self, state):
            self.steps = state["steps"].clone()

    import depthlab.training.trainer as loop
    from depthlab.config import RunConfig
    from depthlab.training import build_from_config, load_run, train, validate_run

    class Stop(loop.StopSignals):
        reads = 0
        @property
        def requested(self):
            Stop.reads += 1
            return 15 if Stop.reads > 30 else None
        @requested.setter
        def requested(self, value):
            pass

    cfg = RunConfig().with_overrides(["model.name=resnet", "model.depth=8", "model.width=4", "train.epochs=2",
                                      "train.device=cpu", "methods.step_counter=true", f"out_dir={sys.argv[1]}"])
    real, loop.StopSignals = loop.StopSignals, Stop
    first = train(cfg, quiet=True)["status"]
    loop.StopSignals = real
    print(json.dumps([first, train(cfg, resume=True, quiet=True)["status"]]))
''')


def test_a_method_from_outside_the_package_gets_config_keys_hooks_and_exact_resume(tmp_path):
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "runs")], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == ["interrupted", "finished"]
    run = next((tmp_path / "runs").iterdir())
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert int(state["methods"]["step_counter"]["steps"]) == 2 * 23  # every step counted, once (23 per epoch)


BROKEN = textwrap.dedent('''
    import importlib.abc, sys

    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == sys.argv[1]:
                raise ImportError(f"{name} is broken")

    sys.meta_path.insert(0, Broken())
    import importlib
    importlib.import_module(sys.argv[2])
''')


@pytest.mark.parametrize("package,module", [("depthlab.diagnostics", "lesion"), ("depthlab.methods", "clip_grad_norm"),
                                            ("depthlab.experiments", "highway")])
def test_a_plugin_module_that_fails_to_import_is_an_error(tmp_path, package, module):
    script = tmp_path / "broken.py"
    script.write_text(BROKEN)
    out = subprocess.run([sys.executable, str(script), f"{package}.{module}", package], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode != 0 and f"{package}.{module} is broken" in out.stderr


def _dedicated_test(name):
    """tests/test_exp_<module>.py, the experiment's own end-to-end test, if it has one."""
    return ROOT / "tests" / f"test_exp_{EXPERIMENTS.get(name).__module__.rpartition('.')[2]}.py"


@pytest.mark.parametrize("name", EXPERIMENTS.names())
@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_every_experiment_plans_valid_runs_at_each_scale(name, scale):
    """Cheap: parameters resolve, every run of the grid is a valid config whose model builds."""
    exp = EXPERIMENTS.get(name)()
    assert exp.smoke and exp.title and exp.source and exp.expected, f"{name}: smoke, title, source, expected"
    p = resolve_params(exp, scale, exp.smoke)
    for spec in exp.runs(p):
        cfg = validate_run(RunConfig().with_overrides([f"data.name={p['dataset'] or 'digits'}", *spec.overrides,
                                                       *(p.get("set") or ())]))
        with torch.device("meta"):
            build_from_config(cfg, 10, 3)


@pytest.mark.parametrize("name", EXPERIMENTS.names())
def test_every_experiment_runs_end_to_end_with_its_smoke_parameters(name, tmp_path):
    if _dedicated_test(name).exists():  # it runs there, with the experiment's own assertions
        assert f'"{name}"' in _dedicated_test(name).read_text() and "smoke" in _dedicated_test(name).read_text()
        return
    doc = reproduce(name, seeds=1, params=EXPERIMENTS.get(name).smoke, out=str(tmp_path), quiet=True)
    statuses = (OBSERVED, NOT_OBSERVED, INCONCLUSIVE)
    assert doc["verdicts"] and all(v["status"].startswith(statuses) and v["claim"] and v["detail"]
                                   for v in doc["verdicts"])
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").stat().st_size > 1000


def test_run_directories_from_before_a_method_was_added_still_load_and_resume(tmp_path):
    """A run made before ``methods.clip_grad_norm`` existed has no such key in its config.json."""
    cfg = _cfg(tmp_path, "old", "methods.stochastic_depth=0.5")
    train(cfg, quiet=True)
    saved = json.loads((cfg.run_dir / "config.json").read_text())
    del saved["methods"]["clip_grad_norm"]
    (cfg.run_dir / "config.json").write_text(json.dumps(saved))
    model, _, loaded, epoch, _ = load_run(cfg.run_dir, device="cpu")
    assert loaded.methods.clip_grad_norm is None and loaded.methods.stochastic_depth == 0.5 and epoch == 1
    assert [b.survival_prob for b in model.blocks][-1] == 0.5  # the method's configure hook ran
    (cfg.run_dir / "checkpoints" / "epoch_0001.pt").unlink()  # as if stopped before the end of epoch 1
    resumed = train(cfg, resume=True, quiet=True)
    assert resumed["status"] == "finished" and resumed["epoch"] == 1


def test_model_options_are_config_keys_checked_against_their_declaration(tmp_path):
    from depthlab.models.spec import model_options

    cfg = RunConfig()
    assert set(model_options()) <= set(vars(cfg.model)) and all(getattr(cfg.model, k) is None for k in model_options())
    with pytest.raises(ConfigError, match="model.activation .swish. is not valid; use relu, leaky_relu, tanh, "
                                          "sigmoid, crelu or linear"):
        RunConfig().with_overrides(["model.activation=swish"]).validate()
    with pytest.raises(ValueError, match="depth 57 is not valid for model family 'resnet'"):
        train(_cfg(tmp_path / "out", "bad", "model.depth=57"), quiet=True)  # caught by a build on meta
    assert not (tmp_path / "out").exists()  # before anything is written
