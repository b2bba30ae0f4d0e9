"""`load_source`: the one entry point every flow reads its data through; it dispatches on
`source.kind` to the reader of that format (`components.data.readers`) or to the synthetic
marketplace generator."""

from __future__ import annotations

from components.config import (
    FixedSplitSourceConfig,
    InteractionsFileSourceConfig,
    MovieLens100kSourceConfig,
    SourceConfig,
)
from components.data.readers.fixed_split import load_fixed_split
from components.data.readers.interactions_file import load_interactions_file
from components.data.readers.movielens import load_movielens_100k
from components.data.readers.parsing import SourceError
from components.data.schema import CanonicalTables


def load_source(config: SourceConfig) -> CanonicalTables:
    """Load the configured source into canonical tables (one entry point for every flow)."""
    kind = getattr(config, "kind", None)
    if kind == "synthetic":
        # Imported here so that real-data runs never pay for (or depend on) the generator.
        from components.data.synthetic import generate_marketplace

        return generate_marketplace(config).tables
    if isinstance(config, MovieLens100kSourceConfig):
        return load_movielens_100k(config)
    if isinstance(config, InteractionsFileSourceConfig):
        return load_interactions_file(config)
    if isinstance(config, FixedSplitSourceConfig):
        return load_fixed_split(config)
    raise SourceError(
        f"unknown source kind {kind!r}; set `source.kind` to one of: synthetic, "
        "movielens_100k, interactions_file, fixed_split"
    )
