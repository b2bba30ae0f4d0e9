"""The exposure log as a day-partitioned Parquet dataset, on a local folder or any
filesystem Arrow reaches (S3, GCS, ...)."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from components.experiments.exposure_log.records import (
    SORT_KEYS,
    exposure_table,
    sorted_exposures,
    utc_bound,
)
from components.experiments.exposure_log.sink import ACCEPTED_URIS
from components.experiments.schema import EXPOSURE_COLUMNS, EXPOSURE_SCHEMA, empty_exposures

#: The hive partition column of the Parquet dataset: the UTC day of served_at.
DATE_PARTITION = "date"


class ParquetExposureSink:
    """A day-partitioned Parquet dataset: `<root>/date=YYYY-MM-DD/part-<stamp>-<hex>.parquet`,
    one file per UTC day per write. Files appear by a move from a hidden name, so dataset
    discovery (which skips names starting with "." or "_") never reads one half written."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._fs, self._root = _filesystem(uri)

    def write(self, rows: pd.DataFrame) -> None:
        table = exposure_table(rows)
        if table.num_rows == 0:
            return
        days = pc.cast(table["served_at"], pa.date32())
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        staged: list[tuple[str, str]] = []
        published: list[str] = []
        try:
            for day in pc.unique(days).to_pylist():
                folder = f"{self._root}/{DATE_PARTITION}={day.isoformat()}"
                self._fs.create_dir(folder, recursive=True)
                name = f"part-{stamp}-{uuid.uuid4().hex}.parquet"
                temporary, final = f"{folder}/.{name}.tmp", f"{folder}/{name}"
                staged.append((temporary, final))
                part = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
                pq.write_table(part.sort_by(SORT_KEYS), temporary, filesystem=self._fs)
            for temporary, final in staged:
                self._publish(temporary, final)
                published.append(final)
        except BaseException:
            # All or none: a batch spanning midnight is retried whole, so the day already
            # moved into place goes too (a retry would otherwise write it twice).
            for path in [temporary for temporary, _ in staged] + published:
                self._remove_quietly(path)
            raise

    def _publish(self, temporary: str, final: str) -> None:
        self._fs.move(temporary, final)

    def _remove_quietly(self, path: str) -> None:
        with contextlib.suppress(OSError, pa.ArrowException):
            self._fs.delete_file(path)

    def read(
        self,
        experiment_id: str | None = None,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        start, end = utc_bound("start", start), utc_bound("end", end)
        if self._fs.get_file_info(self._root).type != pafs.FileType.Directory:
            return empty_exposures()
        dataset = ds.dataset(
            self._root,
            filesystem=self._fs,
            format="parquet",
            schema=EXPOSURE_SCHEMA.append(pa.field(DATE_PARTITION, pa.string())),
            partitioning=ds.partitioning(pa.schema([(DATE_PARTITION, pa.string())]), flavor="hive"),
        )
        conditions = []
        if experiment_id is not None:
            conditions.append(ds.field("experiment_id") == experiment_id)
        served_at_type = EXPOSURE_SCHEMA.field("served_at").type
        if start is not None:
            conditions.append(ds.field(DATE_PARTITION) >= start.strftime("%Y-%m-%d"))
            conditions.append(
                ds.field("served_at") >= pa.scalar(start.to_pydatetime(), served_at_type)
            )
        if end is not None:
            conditions.append(ds.field(DATE_PARTITION) <= end.strftime("%Y-%m-%d"))
            conditions.append(
                ds.field("served_at") < pa.scalar(end.to_pydatetime(), served_at_type)
            )
        where = None
        for condition in conditions:
            where = condition if where is None else where & condition
        return sorted_exposures(dataset.to_table(columns=list(EXPOSURE_COLUMNS), filter=where))


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root path of a dataset URI (a plain path: the local one)."""
    if not uri or not uri.strip():
        raise ValueError(f"exposure log URI {uri!r} is empty: give {ACCEPTED_URIS}")
    if "://" not in uri:
        root = Path(uri).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise ValueError(
                f"exposure log path {uri!r} is a file: give a folder for the Parquet dataset"
            )
        return pafs.LocalFileSystem(), root.as_posix()
    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ValueError(
            f"exposure log URI {uri!r} is not usable ({error}): give {ACCEPTED_URIS}"
        ) from error
    return filesystem, root.rstrip("/")
