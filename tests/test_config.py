import json

import pytest

from depthlab.config import ConfigError, RunConfig, valid_keys


def test_defaults_round_trip_through_dict_and_json():
    cfg = RunConfig()
    again = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert cfg.run_dir.as_posix() == "runs/resnet20-digits-s0"


def test_overrides_parse_types():
    cfg = RunConfig().with_overrides(["model.name=plain56", "train.lr=0.05", "train.epochs=3",
                                      "train.weight_decay=1e-4", "model.zero_init_residual=true",
                                      "data.val_fraction=0.1", "run_id=abc"])
    assert cfg.model.name == "plain56" and cfg.train.lr == 0.05 and cfg.train.epochs == 3
    assert cfg.train.weight_decay == pytest.approx(1e-4) and cfg.model.zero_init_residual is True
    assert cfg.data.val_fraction == 0.1 and cfg.run_id == "abc"
    assert isinstance(cfg.train.lr, float) and isinstance(cfg.train.epochs, int)


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"train\.lrr.*train\.lr"):
        RunConfig().with_overrides(["train.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"'model\.colour'.*name, depth"):
        RunConfig.from_dict({"model": {"colour": "red"}})
    with pytest.raises(ConfigError, match="section"):
        RunConfig().with_overrides(["nosuch.key=1"])
    assert "train.recipe" in valid_keys()


@pytest.mark.parametrize("override, field", [
    ("train.lr=abc", "train.lr"), ("train.epochs=2.5", "train.epochs"), ("train.epochs=many", "train.epochs"),
    ("model.zero_init_residual=maybe", "model.zero_init_residual"), ("data.seed=[1]", "data.seed"),
])
def test_wrong_type_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        RunConfig().with_overrides([override])


@pytest.mark.parametrize("override, message", [
    ("train.lr=0", "train.lr must be > 0"), ("train.lr=-0.1", "train.lr must be > 0"),
    ("train.epochs=0", "train.epochs must be a positive"), ("train.batch_size=-5", "train.batch_size must be"),
    ("data.val_fraction=1.0", "data.val_fraction"), ("train.device=tpu", "train.device"),
    ("data.augment=rotate", "data.augment.*crop-flip"), ("train.keep_best=true", "validation split"),
    ("model.name=resnet57", "model.name 'resnet57' is unknown.*resnet56"),
    ("data.name=imagenet", "data.name 'imagenet' is unknown.*digits"),
    ("train.recipe=fast", "train.recipe 'fast' is unknown.*he2015"),
    ("methods.stochastic_depth=0", r"methods\.stochastic_depth"), ("methods.stochastic_depth=1.5", "p_L"),
    ("methods.stochastic_depth_mode=layer", "batch or sample"), ("methods.orthonormal=-1", "lambda"),
    ("methods.modulation=bottom", "top-conv, fc, next"), ("methods.modulation_epochs=0", "modulation_epochs"),
])
def test_validate_rejects_bad_values(override, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig().with_overrides([override]).validate()


def test_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: plain20\ntrain:\n  lr: 1e-3\n  epochs: 2\n")
    cfg = RunConfig.from_yaml(p)
    assert cfg.model.name == "plain20" and cfg.train.lr == pytest.approx(1e-3) and cfg.train.epochs == 2
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        RunConfig.from_yaml(p)
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_yaml(tmp_path / "missing.yaml")


def test_yaml_selects_methods_and_model_options(tmp_path):
    p = tmp_path / "remedy.yaml"
    p.write_text("model:\n  name: plain\n  depth: 56\n  activation: crelu\n  init: looks-linear\n"
                 "methods:\n  orthonormal: 1e-3\n  modulation: top-conv\n  modulation_epochs: 2\n")
    cfg = RunConfig.from_yaml(p).validate()
    assert cfg.model.activation == "crelu" and cfg.model.init == "looks-linear"
    assert cfg.methods.orthonormal == pytest.approx(1e-3) and cfg.methods.modulation == "top-conv"
    assert cfg.methods.modulation_epochs == 2 and cfg.methods.stochastic_depth is None
    again = cfg.with_overrides(["methods.stochastic_depth=0.5", "model.name=resnet", "model.rezero=true"])
    assert again.methods.stochastic_depth == 0.5 and again.model.rezero is True
