from pathlib import Path

import pytest

from components.config import ConfigError, TwoTowerConfig, config_hash, load_config

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


SYNTHETIC = REPO / "configs" / "synthetic.yaml"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("split.valid_duration", "banana"),
        ("split.test_duration", "7"),  # no unit: pandas would read 7 nanoseconds
        ("split.test_duration", "-3D"),
        ("split.valid_duration", "1M"),  # months are not a fixed duration
        ("model.popularity.window", 14),
        ("model.popularity.half_life", "0D"),
        ("model.two_tower.batch_window", "daily"),
        ("model.two_tower.recency_half_life", "soon"),
        ("model.candidates.covisitation.session_gap", "half an hour"),
        ("model.candidates.affinity_half_life", "two weeks"),
        ("model.ranker.popularity_windows", ["7D", "week"]),
        ("evaluation.new_item_age", "new"),
        ("evaluation.baselines.covisitation.window", "x"),
    ],
)
def test_every_duration_is_checked_at_load_naming_the_key_and_an_example(key, value):
    with pytest.raises(ConfigError) as raised:
        load_config(SYNTHETIC, {key: value})
    message = str(raised.value)
    assert key.split(".")[-1] in message
    assert repr(value[-1] if isinstance(value, list) else value) in message
    assert "write e.g. '7D'" in message


@pytest.mark.parametrize("name", ["../evil", "a/b", "", " rewear", "x" * 101, "models:/x"])
def test_the_model_name_is_refused_at_load_with_the_allowed_characters(name):
    with pytest.raises(ConfigError, match=r"registry\.model_name: .*letters, digits, '\.', '_'"):
        load_config(SYNTHETIC, {"registry.model_name": name})


def test_names_that_fit_the_registry_load():
    config = load_config(SYNTHETIC, {"registry.model_name": "rewear-eu_2.v1", "name": "eu.1"})
    assert config.registry.model_name == "rewear-eu_2.v1" and config.name == "eu.1"
    with pytest.raises(ConfigError, match=r"  name: '\.\./x' is not a valid name"):
        load_config(SYNTHETIC, {"name": "../x"})
    with pytest.raises(ConfigError, match=r"registry\.experiment"):
        load_config(SYNTHETIC, {"registry.experiment": ""})


def test_the_promotion_metric_must_be_one_the_comparison_produces():
    with pytest.raises(ConfigError) as raised:
        load_config(SYNTHETIC, {"registry.promotion.metric": "bogus@10"})
    assert "registry.promotion.metric 'bogus@10'" in str(raised.value)
    assert "['ndcg@10', 'recall@20', 'ndcg@20', 'recall@100']" in str(raised.value)
    # A metric the comparison produces, but not at the configured cut-offs.
    with pytest.raises(ConfigError, match=r"at evaluation\.ks \[20, 100\]; use one of \['recall"):
        load_config(SYNTHETIC, {"registry.promotion.metric": "ndcg@10", "evaluation.ks": [20, 100]})
    config = load_config(SYNTHETIC, {"registry.promotion.metric": "recall@100"})
    assert config.registry.promotion.metric == "recall@100"


def test_the_coverage_metric_and_the_exposure_guard_need_their_k_evaluated():
    with pytest.raises(ConfigError, match=r"coverage_metric 'coverage@7' .*e\.g\. 'coverage@100'"):
        load_config(SYNTHETIC, {"registry.promotion.coverage_metric": "coverage@7"})
    with pytest.raises(ConfigError, match=r"exposure_guard compares exposure at k=\[20\]"):
        load_config(
            SYNTHETIC,
            {"evaluation.ks": [10, 100], "registry.promotion.coverage_metric": "coverage@100"},
        )
    config = load_config(
        SYNTHETIC,
        {
            "evaluation.ks": [10, 100],
            "registry.promotion.coverage_metric": "gini_sellers@100",
            "registry.promotion.exposure_guard": False,
        },
    )
    assert config.registry.promotion.coverage_metric == "gini_sellers@100"


def test_source_weights_must_name_candidate_models():
    with pytest.raises(ConfigError, match=r"source_weights names \['twotower'\].*'two_tower'"):
        load_config(SYNTHETIC, {"model.candidates.source_weights": {"twotower": 2.0}})


def test_the_dask_address_needs_a_scheme():
    with pytest.raises(ConfigError, match=r"dask_address: 'host:8786' .*e\.g\. tcp://host:8786"):
        load_config(SYNTHETIC, {"model.ranker.dask_address": "host:8786"})


def test_the_synthetic_start_must_be_a_date():
    with pytest.raises(ConfigError, match=r"start: 'soon' is not a date; write e\.g\. '2026-"):
        load_config(SYNTHETIC, {"source.start": "soon"})


def test_errors_are_one_line_per_value_without_pydantic_links():
    with pytest.raises(ConfigError) as raised:
        load_config(SYNTHETIC, {"source.n_users": -3, "split.valid_duration": "banana"})
    lines = str(raised.value).splitlines()
    assert lines[0].endswith("synthetic.yaml is invalid:")
    assert lines[1:] == [
        "  source.synthetic.n_users: Input should be greater than or equal to 10 (got -3)",
        "  split.valid_duration: 'banana' is not a positive duration; "
        "write e.g. '7D', '12h' or '30min'",
    ]
    assert "errors.pydantic.dev" not in str(raised.value)


def test_the_environment_overrides_apply_once_where_the_config_is_loaded(monkeypatch):
    """REWEAR_ENCODER_PROCESSES lands in the loaded config (after the caller's overrides),
    so the step that trains the encoder, its cache key and the saved model all see it."""
    with pytest.raises(ValueError):
        TwoTowerConfig(processes=0)
    monkeypatch.delenv("REWEAR_ENCODER_PROCESSES", raising=False)
    path = REPO / "configs" / "synthetic.yaml"
    assert load_config(path).model.two_tower.processes == 1
    monkeypatch.setenv("REWEAR_ENCODER_PROCESSES", "3")
    assert load_config(path, {"model.two_tower.processes": 2}).model.two_tower.processes == 3
    monkeypatch.setenv("REWEAR_ENCODER_PROCESSES", "0")
    with pytest.raises(ConfigError, match="encoder_processes: Input should be greater than"):
        load_config(path)
