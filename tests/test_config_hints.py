"""Config messages that point to the fix: the closest valid key first, a family and depth for a
preset that does not exist, and an empty YAML file refused instead of training the defaults."""
import pytest

from depthlab.config import ConfigError, RunConfig


@pytest.mark.parametrize("override,suggestion", [
    ("model.nme=resnet20", "did you mean 'model.name' or 'model.norm'?"),
    ("train.lrr=0.1", "did you mean 'train.lr'?"),
    ("modl.name=plain20", "did you mean 'model.name'?"),
    ("methods.clip_grad=1", "did you mean 'methods.clip_grad_norm'?"),
])
def test_unknown_keys_suggest_the_closest_valid_key_before_listing_them_all(override, suggestion):
    with pytest.raises(ConfigError) as e:
        RunConfig().with_overrides([override])
    message = str(e.value)
    assert suggestion in message and message.index(suggestion) < message.index("valid keys")


def test_unknown_nested_key_in_a_file_suggests_too(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  nme: plain20\n")
    with pytest.raises(ConfigError,
                       match=r"unknown config key 'model\.nme'; did you mean 'model\.name' or 'model\.norm'\?"):
        RunConfig.from_yaml(tmp_path / "c.yaml")


@pytest.mark.parametrize("name,hint", [
    ("plain8", "For family 'plain' at depth 8, set model.name=plain model.depth=8."),
    ("resnet-14", "For family 'resnet' at depth 14, set model.name=resnet model.depth=14."),
    ("resnet21", "set model.name=resnet model.depth=21 (valid depths are 6n+2"),
])
def test_a_family_and_depth_without_a_preset_says_how_to_ask_for_it(name, hint):
    with pytest.raises(ConfigError) as e:
        RunConfig().with_overrides([f"model.name={name}"]).validate()
    assert hint in str(e.value)


def test_a_name_that_is_no_family_gets_no_depth_hint():
    with pytest.raises(ConfigError) as e:
        RunConfig().with_overrides(["model.name=resnt20"]).validate()
    assert "For family" not in str(e.value) and "Did you mean 'resnet20'" in str(e.value)


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_an_empty_yaml_file_is_refused(tmp_path, text):
    (tmp_path / "empty.yaml").write_text(text)
    with pytest.raises(ConfigError, match="is empty"):
        RunConfig.from_yaml(tmp_path / "empty.yaml")
