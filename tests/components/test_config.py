from pathlib import Path

import pytest

from components.config import ConfigError, config_hash, load_config

REPO = Path(__file__).resolve().parents[2]


SHIPPED = ["synthetic", "movielens-100k", "ml-1m-lcfn", "gowalla"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    config = load_config(REPO / "configs" / f"{name}.yaml")
    assert config.name == name


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_trains_the_two_tower_and_reranks(name):
    model = load_config(REPO / "configs" / f"{name}.yaml").model
    assert model.uses_two_tower and model.candidates.sources[0] == "two_tower"
    assert model.describe()["kind"] == "two_stage" and model.describe()["ranker"] == "lightgbm"


def test_the_retired_model_kind_fails_naming_the_words_that_replaced_it():
    with pytest.raises(ConfigError, match=r"model\.kind was replaced.*model\.candidates\.sources"):
        load_config(REPO / "configs" / "synthetic.yaml", {"model.kind": "two_tower"})
    with pytest.raises(ConfigError, match=r"model\.ranker\.enabled"):
        load_config(REPO / "configs" / "synthetic.yaml", {"model.kind": "recent_popularity"})


def test_the_renamed_ann_source_fails_naming_two_tower():
    overrides = {"model.candidates.sources": ["ann", "popularity"]}
    with pytest.raises(ConfigError, match="'ann' is now called 'two_tower'"):
        load_config(REPO / "configs" / "synthetic.yaml", overrides)


def test_the_model_description_follows_the_sources_and_the_ranker():
    overrides = {"model.candidates.sources": ["covisitation"], "model.ranker.enabled": False}
    model = load_config(REPO / "configs" / "synthetic.yaml", overrides).model
    assert not model.uses_two_tower
    assert model.describe() == {
        "kind": "retrieval_fusion",
        "sources": ["covisitation"],
        "ranker": None,
    }
    assert model.summary() == "retrieval_fusion: covisitation"


def test_candidate_models_are_configured_in_the_model_not_the_baselines():
    config = load_config(
        REPO / "configs" / "synthetic.yaml", {"model.candidates.covisitation.window": "3D"}
    )
    assert config.model.candidates.covisitation.window == "3D"
    assert config.evaluation.baselines.covisitation.window == "28D"  # the yardstick's own


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
