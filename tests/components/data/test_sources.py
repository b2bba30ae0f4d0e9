"""`load_source` dispatches on the source kind to each reader (and to the synthetic
generator), directly and through the pipeline config."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from components.config import (
    FixedSplitSourceConfig,
    MovieLens100kSourceConfig,
    PipelineConfig,
    SyntheticSourceConfig,
)
from components.data.readers.parsing import SourceError
from components.data.sources import load_source
from tests.components.data.source_files import (
    EPOCH_S,
    interactions_config,
    small_events,
    write_csv,
    write_fixed_split,
    write_ml_100k,
)


def test_load_source_dispatches_on_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = write_csv(tmp_path / "events.csv", small_events(EPOCH_S))
    assert load_source(interactions_config(events)).source["kind"] == "interactions_file"
    split = write_fixed_split(tmp_path / "split")
    assert load_source(FixedSplitSourceConfig(path=split)).source["kind"] == "fixed_split"
    ml = write_ml_100k(tmp_path / "ml")
    assert load_source(MovieLens100kSourceConfig(path=ml)).source["kind"] == "movielens_100k"

    # Through the pipeline config's discriminated union, as a YAML file would give it.
    pipeline = PipelineConfig.model_validate(
        {"name": "t", "source": {"kind": "fixed_split", "path": str(split)}}
    )
    assert load_source(pipeline.source).has_fixed_split

    # The synthetic generator is someone else's module: stand in for it.
    expected = load_source(FixedSplitSourceConfig(path=split))
    seen: list[object] = []

    def generate_marketplace(config: SyntheticSourceConfig) -> types.SimpleNamespace:
        seen.append(config)
        return types.SimpleNamespace(tables=expected)

    fake = types.ModuleType("components.data.synthetic")
    fake.generate_marketplace = generate_marketplace
    monkeypatch.setitem(sys.modules, "components.data.synthetic", fake)
    synthetic = SyntheticSourceConfig(n_users=10)
    assert load_source(synthetic) is expected
    assert seen == [synthetic]

    with pytest.raises(SourceError, match="unknown source kind"):
        load_source(types.SimpleNamespace(kind="csv"))
