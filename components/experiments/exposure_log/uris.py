"""Which sink an exposure-log URI names (postgresql:// URLs a table, anything else a
Parquet dataset), and reading the log through it."""

from __future__ import annotations

import pandas as pd

from components.experiments.exposure_log.parquet import ParquetExposureSink
from components.experiments.exposure_log.postgres import PostgresExposureSink
from components.experiments.exposure_log.sink import ExposureSink


def _is_postgres(uri: str) -> bool:
    scheme, separator, _ = uri.partition("://")
    return bool(separator) and scheme.lower().startswith("postgres")


def open_exposure_sink(uri: str) -> ExposureSink:
    """The sink a URI names: postgresql:// URLs a table, anything else a Parquet dataset."""
    if _is_postgres(uri):
        return PostgresExposureSink(uri)
    return ParquetExposureSink(uri)


def read_exposures(
    uri: str,
    experiment_id: str | None = None,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """The exposures under `uri` with served_at in [start, end) (see ExposureSink.read)."""
    return open_exposure_sink(uri).read(experiment_id=experiment_id, start=start, end=end)
