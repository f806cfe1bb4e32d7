"""The method registry: what switches a method on, and ``register``'s refusals."""
from types import SimpleNamespace

import pytest
from modelkit import methods_cfg

from depthlab.methods import (
    METHODS,
    Option,
    TrainingMethod,
    all_options,
    enabled_methods,
    register,
)

# the method registry (depthlab.methods.base)

def test_any_value_but_none_zero_or_false_switches_a_method_on():
    clip = METHODS.get("clip_grad_norm")
    for on in (1, 1.0, 0.5, True, "top"):
        assert clip.enabled(SimpleNamespace(clip_grad_norm=on)), on
    for off in (None, 0, 0.0, False):
        assert not clip.enabled(SimpleNamespace(clip_grad_norm=off)), off
    # fixup_lr is the one method on by default (it changes only Fixup nets' optimiser groups)
    assert [m.name for m in enabled_methods(methods_cfg())] == ["fixup_lr"]
    cfg = methods_cfg("methods.stochastic_depth=1.0", "methods.clip_grad_norm=1")
    assert [m.name for m in enabled_methods(cfg)] == [n for n in METHODS
                                                      if n in ("stochastic_depth", "clip_grad_norm", "fixup_lr")]
    assert methods_cfg("methods.clip_grad_norm=0.5").clip_grad_norm == 0.5  # > 0 is enough


@pytest.fixture
def scratch_registry(monkeypatch):
    """Register test methods into a copy of ``METHODS``, dropped after the test."""
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHODS, "_meta", dict(METHODS._meta))


def test_register_adds_a_method_with_new_options_and_refuses_the_rest(scratch_registry):
    class Silent(TrainingMethod):
        name = "silent"

    with pytest.raises(ValueError, match="training method 'silent' declares no options"):
        register(Silent)

    class Clash(TrainingMethod):
        name = "clash"
        options = {"fresh_key": Option(int, None), "orthonormal": Option(float, 0.0)}

    with pytest.raises(ValueError, match=r"method 'clash': options \['orthonormal'\] are already 'orthonormal''s"):
        register(Clash)
    assert "silent" not in METHODS and "clash" not in METHODS

    class Fresh(TrainingMethod):
        name = "fresh"
        options = {"fresh_level": Option(int, None), "fresh_mode": Option(str, "a")}

    assert register(Fresh) is Fresh and METHODS.get("fresh") is Fresh and Fresh.switch() == "fresh_level"
    options = all_options()
    assert all(options[k] is Fresh.options[k] for k in ("fresh_level", "fresh_mode"))
    cfg = SimpleNamespace(**{k: o.default for k, o in options.items()})
    on = [m for m in enabled_methods(cfg) if m.on_by_default]  # fixup_lr
    assert enabled_methods(cfg) == on
    cfg.fresh_level = 3
    assert enabled_methods(cfg) == on + [Fresh]
    assert Fresh(cfg).cfg is cfg
