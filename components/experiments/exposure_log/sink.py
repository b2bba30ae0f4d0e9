"""What an exposure sink is: the protocol the Parquet dataset and the PostgreSQL table
both follow, and the URIs that name one."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import pandas as pd

#: The URIs an exposure log accepts, for error messages.
ACCEPTED_URIS = (
    "a local folder, a filesystem URI pyarrow.fs.FileSystem.from_uri accepts "
    "(file:///..., s3://bucket/prefix, gs://...) or a postgresql://user:password@host/db URL"
)


@runtime_checkable
class ExposureSink(Protocol):
    """Where exposure rows are kept. `write` is synchronous and atomic (readers see all of
    its rows or none); `read` returns rows with served_at in [start, end), every column of
    EXPOSURE_SCHEMA with its dtypes, sorted by served_at, request_id, position."""

    def write(self, rows: pd.DataFrame) -> None: ...

    def read(
        self,
        experiment_id: str | None = None,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame: ...
