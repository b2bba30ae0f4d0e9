from pathlib import Path

import pytest

from components.config import ConfigError, config_hash, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["synthetic", "movielens-100k", "ml-1m-lcfn"])
def test_shipped_configs_load(name):
    config = load_config(REPO / "configs" / f"{name}.yaml")
    assert config.name == name


def test_relative_source_paths_resolve_against_the_config_file():
    config = load_config(REPO / "configs" / "movielens-100k.yaml")
    assert config.source.path == (REPO.parent / "shared" / "data" / "ml-100k").resolve()


def test_overrides_change_values_and_the_hash():
    base = load_config(REPO / "configs" / "synthetic.yaml")
    small = load_config(REPO / "configs" / "synthetic.yaml", {"source.n_users": 50})
    assert small.source.n_users == 50
    assert config_hash(small) != config_hash(base)
    assert config_hash(base) == config_hash(load_config(REPO / "configs" / "synthetic.yaml"))


def test_unknown_keys_are_refused_with_the_file_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsource: {kind: synthetic}\nsplitt: {}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is invalid(.|\n)*splitt"):
        load_config(path)


def test_missing_file_says_what_to_pass(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_split_needs_a_complete_rule(tmp_path):
    path = tmp_path / "split.yaml"
    path.write_text("name: x\nsource: {kind: synthetic}\nsplit: {valid_fraction: 0.1}\n")
    with pytest.raises(ConfigError, match="both valid_fraction and test_fraction"):
        load_config(path)
