"""The exposure log: where every served slot is written, and the buffer the served model
logs through.

Two sinks hold the same rows (`EXPOSURE_SCHEMA`): a day-partitioned Parquet dataset on a
local folder or any filesystem Arrow reaches (S3, GCS, ...), and a PostgreSQL table. Each
`write` is one atomic unit, so a reader never sees half of a batch and a retried batch is
never counted twice. `ExposureLogger` sits in front of a sink: the request path only
appends to memory, a background thread writes, and nothing is lost while the process lives
(failed writes are retried; `close` runs at exit).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import datetime as dt
import logging
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from components.experiments.schema import (
    EXPOSURE_COLUMNS,
    EXPOSURE_SCHEMA,
    REQUIRED_EXPOSURE_COLUMNS,
    empty_exposures,
    exposure_frame,
)

logger = logging.getLogger(__name__)

#: The order `read` returns rows in (and each Parquet file is written in).
SORT_KEYS = [("served_at", "ascending"), ("request_id", "ascending"), ("position", "ascending")]
#: The hive partition column of the Parquet dataset: the UTC day of served_at.
DATE_PARTITION = "date"
#: Seconds between two warnings of one kind (dropped rows, failed writes).
WARNING_INTERVAL_S = 60.0
_ACCEPTED = (
    "a local folder, a filesystem URI pyarrow.fs.FileSystem.from_uri accepts "
    "(file:///..., s3://bucket/prefix, gs://...) or a postgresql://user:password@host/db URL"
)
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


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


def exposure_table(rows: pd.DataFrame) -> pa.Table:
    """`rows` as an Arrow table of EXPOSURE_SCHEMA (extra columns ignored, optional ones
    that are absent written as nulls), checked column by column so that a bad batch is
    refused with the column's name before anything is written."""
    missing = [name for name in REQUIRED_EXPOSURE_COLUMNS if name not in rows.columns]
    if missing:
        raise ValueError(
            f"exposure rows lack column(s) {missing}: give every required column of "
            "EXPOSURE_COLUMNS (components.experiments.schema)"
        )
    arrays = []
    for field in EXPOSURE_SCHEMA:
        if field.name not in rows.columns:
            arrays.append(pa.nulls(len(rows), type=field.type))
            continue
        values = rows[field.name]
        if pa.types.is_timestamp(field.type):
            if not isinstance(values.dtype, pd.DatetimeTZDtype):
                raise ValueError(
                    f"exposure column {field.name!r} has dtype {values.dtype}, not "
                    "timezone-aware timestamps: convert it with pd.to_datetime(values, utc=True)"
                )
            values = values.dt.tz_convert("UTC").dt.floor("us")
        try:
            array = pa.array(values, type=field.type, from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as error:
            raise ValueError(
                f"exposure column {field.name!r} (dtype {values.dtype}) does not convert to "
                f"{field.type}: {error}; cast it first (e.g. rows[{field.name!r}]"
                f".astype({_pandas_type(field.type)!r}))"
            ) from error
        if not field.nullable and array.null_count:
            raise ValueError(
                f"exposure column {field.name!r} holds {array.null_count} null value(s) but "
                "may not be null: fill them or drop those rows before logging"
            )
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=EXPOSURE_SCHEMA)


def _pandas_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_string(arrow_type):
        return "str"
    if pa.types.is_integer(arrow_type):
        return str(arrow_type)
    return "float64"


def _utc(name: str, value: pd.Timestamp | None) -> pd.Timestamp | None:
    """A read bound in UTC; a naive one is refused rather than guessed."""
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        raise ValueError(
            f"{name}={value!r} has no timezone: pass a UTC timestamp, "
            f"e.g. pd.Timestamp({str(stamp)!r}, tz='UTC')"
        )
    return stamp.tz_convert("UTC")


def _frame(table: pa.Table) -> pd.DataFrame:
    """The schema's columns with its dtypes, in read order."""
    if table.num_rows == 0:
        return empty_exposures()
    table = table.select(list(EXPOSURE_COLUMNS)).cast(EXPOSURE_SCHEMA).sort_by(SORT_KEYS)
    return exposure_frame(table)


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
        start, end = _utc("start", start), _utc("end", end)
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
        return _frame(dataset.to_table(columns=list(EXPOSURE_COLUMNS), filter=where))


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root path of a dataset URI (a plain path: the local one)."""
    if not uri or not uri.strip():
        raise ValueError(f"exposure log URI {uri!r} is empty: give {_ACCEPTED}")
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
            f"exposure log URI {uri!r} is not usable ({error}): give {_ACCEPTED}"
        ) from error
    return filesystem, root.rstrip("/")


class PostgresExposureSink:
    """A PostgreSQL table of the schema's columns (served_at timestamptz), indexed on
    (experiment_id, served_at) for the readout's per-experiment time ranges. Created on
    first use; each write is one transaction (COPY under psycopg 3)."""

    def __init__(self, url: str, table: str = "rewear_exposures") -> None:
        import sqlalchemy as sa

        if not _TABLE_NAME.fullmatch(table):
            raise ValueError(
                f"table name {table!r} is not a plain SQL identifier: use letters, digits "
                "and underscores (at most 63), starting with a letter or underscore"
            )
        self.url = url
        self.table_name = table
        try:
            self._engine = sa.create_engine(
                _psycopg_url(url),
                pool_pre_ping=True,
                connect_args={"options": "-c timezone=UTC"},
            )
        except (sa.exc.ArgumentError, ImportError) as error:
            raise ValueError(
                f"exposure log URL {_redacted(url)!r} is not usable ({error}): give {_ACCEPTED}"
            ) from error
        self._table = _exposure_table_ddl(sa.MetaData(), table)
        self._created = False
        self._create_lock = threading.Lock()

    def _ensure_table(self) -> None:
        """CREATE the table and index unless they exist (a racing creator is fine)."""
        if self._created:
            return
        import sqlalchemy as sa

        with self._create_lock:
            if self._created:
                return
            try:
                self._table.metadata.create_all(self._engine, checkfirst=True)
            except sa.exc.DBAPIError:
                if not sa.inspect(self._engine).has_table(self.table_name):
                    raise
            self._add_missing_columns()
            self._created = True

    def _add_missing_columns(self) -> None:
        """A table created by an older rewear lacks the newer nullable columns: add them
        (ALTER TABLE ... ADD COLUMN IF NOT EXISTS) rather than fail every write."""
        import sqlalchemy as sa

        present = {
            column["name"] for column in sa.inspect(self._engine).get_columns(self.table_name)
        }
        missing = [column for column in self._table.columns if column.name not in present]
        if not missing:
            return
        preparer = self._engine.dialect.identifier_preparer
        with self._engine.begin() as connection:
            for column in missing:
                kind = column.type.compile(dialect=self._engine.dialect)
                connection.execute(
                    sa.text(
                        f"ALTER TABLE {preparer.quote(self.table_name)} ADD COLUMN IF NOT "
                        f"EXISTS {preparer.quote(column.name)} {kind}"
                    )
                )

    def write(self, rows: pd.DataFrame) -> None:
        table = exposure_table(rows)
        if table.num_rows == 0:
            return
        self._ensure_table()
        records = list(zip(*(column.to_pylist() for column in table.columns), strict=True))
        with self._engine.begin() as connection:
            if self._engine.dialect.driver == "psycopg":
                quote = self._engine.dialect.identifier_preparer.quote
                columns = ", ".join(quote(name) for name in EXPOSURE_COLUMNS)
                raw = connection.connection.driver_connection
                with (
                    raw.cursor() as cursor,
                    cursor.copy(f"COPY {quote(self.table_name)} ({columns}) FROM STDIN") as copy,
                ):
                    for record in records:
                        copy.write_row(record)
            else:
                named = [dict(zip(EXPOSURE_COLUMNS, record, strict=True)) for record in records]
                connection.execute(self._table.insert(), named)

    def read(
        self,
        experiment_id: str | None = None,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        import sqlalchemy as sa

        start, end = _utc("start", start), _utc("end", end)
        self._ensure_table()
        columns = self._table.c
        query = sa.select(*(columns[name] for name in EXPOSURE_COLUMNS))
        if experiment_id is not None:
            query = query.where(columns.experiment_id == experiment_id)
        if start is not None:
            query = query.where(columns.served_at >= start.to_pydatetime())
        if end is not None:
            query = query.where(columns.served_at < end.to_pydatetime())
        query = query.order_by(columns.served_at, columns.request_id, columns.position)
        with self._engine.connect() as connection:
            records = connection.execute(query).all()
        if not records:
            return empty_exposures()
        values = list(zip(*records, strict=True))
        arrays = [
            pa.array(column, type=field.type)
            for column, field in zip(values, EXPOSURE_SCHEMA, strict=True)
        ]
        return _frame(pa.Table.from_arrays(arrays, schema=EXPOSURE_SCHEMA))

    def dispose(self) -> None:
        """Close the pooled connections (tests, and processes that stop logging)."""
        self._engine.dispose()


def _exposure_table_ddl(metadata: Any, name: str) -> Any:
    import sqlalchemy as sa

    types = {
        "served_at": sa.DateTime(timezone=True),
        "position": sa.Integer(),
        "score": sa.Double(),
        "propensity": sa.Double(),
        "prefix_propensity": sa.Double(),
        "inclusion_propensity": sa.Double(),
        "candidate_rank": sa.Integer(),
    }
    columns = [
        sa.Column(field.name, types.get(field.name, sa.Text()), nullable=field.nullable)
        for field in EXPOSURE_SCHEMA
    ]
    table = sa.Table(name, metadata, *columns)
    sa.Index(f"{name}_experiment_served_at", table.c.experiment_id, table.c.served_at)
    return table


def _is_postgres(uri: str) -> bool:
    scheme, separator, _ = uri.partition("://")
    return bool(separator) and scheme.lower().startswith("postgres")


def _psycopg_url(url: str) -> str:
    """Plain postgresql:// (or postgres://) URLs get the psycopg 3 driver, the one the
    project installs (SQLAlchemy's default would be psycopg2)."""
    scheme, rest = url.split("://", 1)
    if scheme.lower() in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def _redacted(url: str) -> str:
    """The URL without its password, for error messages."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


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


class ExposureLogger:
    """The buffer in front of a sink, for the request path: `log` only appends to memory
    under a short lock (never I/O, never raises); a daemon thread writes every
    `flush_interval_s`, or sooner once `flush_rows` are waiting. A failed write keeps its
    rows for the next try; beyond `max_buffered_rows` (a sink down for long) new rows are
    dropped and counted rather than growing memory without bound. `close` (also run at
    exit) writes what is left.

    Example::

        exposures = ExposureLogger(open_exposure_sink("s3://bucket/exposures"))
        exposures.log(slots)  # one row per served slot, EXPOSURE_SCHEMA's columns
    """

    def __init__(
        self,
        sink: ExposureSink,
        flush_rows: int = 5_000,
        flush_interval_s: float = 2.0,
        max_buffered_rows: int = 2_000_000,
    ) -> None:
        if flush_rows < 1 or max_buffered_rows < 1 or flush_interval_s <= 0:
            raise ValueError(
                f"flush_rows={flush_rows}, max_buffered_rows={max_buffered_rows} and "
                f"flush_interval_s={flush_interval_s} must all be positive"
            )
        self.sink = sink
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.max_buffered_rows = max_buffered_rows
        self._lock = threading.Lock()  # the queue and the counters
        self._writing = threading.Lock()  # one write at a time (thread, flush, close)
        self._pending: collections.deque[pd.DataFrame] = collections.deque()
        #: Rows logged and not yet written (queued or in a write under way).
        self._buffered = 0
        self._logged = 0
        self._written = 0
        self._dropped = 0
        self._failed_writes = 0
        self._last_warning: dict[str, float] = {}
        self._closed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="rewear-exposure-logger", daemon=True
        )
        self._thread.start()
        atexit.register(self._close_at_exit)

    @property
    def logged_rows(self) -> int:
        """Rows `log` accepted (queued; later written, or dropped if not of the schema)."""
        return self._logged

    @property
    def written_rows(self) -> int:
        return self._written

    @property
    def dropped_rows(self) -> int:
        """Rows refused: over max_buffered_rows, logged after close, or not of the schema."""
        return self._dropped

    @property
    def failed_writes(self) -> int:
        return self._failed_writes

    @property
    def buffered_rows(self) -> int:
        return self._buffered

    def log(self, rows: pd.DataFrame) -> None:
        """Queue `rows` for writing; returns at once (the caller keeps serving)."""
        try:
            if not isinstance(rows, pd.DataFrame):
                raise TypeError(f"log takes a DataFrame of exposure rows, not {type(rows)}")
            count = len(rows)
            if count == 0:
                return
            missing = [name for name in REQUIRED_EXPOSURE_COLUMNS if name not in rows.columns]
            if missing:
                with self._lock:
                    self._dropped += count
                self._warn(
                    "invalid",
                    "exposure logger: dropped %d rows lacking column(s) %s: log every column "
                    "of EXPOSURE_COLUMNS (components.experiments.schema)",
                    count,
                    missing,
                )
                return
            # A new frame (copy-on-write): the caller may go on changing its own. Optional
            # columns it lacks are written as nulls (exposure_table).
            rows = rows[[name for name in EXPOSURE_COLUMNS if name in rows.columns]]
            with self._lock:
                if self._closed or self._buffered + count > self.max_buffered_rows:
                    self._dropped += count
                    dropped, closed = self._dropped, self._closed
                else:
                    self._pending.append(rows)
                    self._buffered += count
                    self._logged += count
                    if self._buffered >= self.flush_rows:
                        self._wake.set()
                    return
            self._warn(
                "dropped",
                "exposure logger %s: dropped %d rows (%d in all; max_buffered_rows=%d)",
                "closed" if closed else "buffer full",
                count,
                dropped,
                self.max_buffered_rows,
            )
        except Exception:
            self._warn("log", "exposure logger could not queue rows", exc_info=True)

    def flush(self) -> None:
        """Write everything buffered now, from this thread; raises if the sink fails (the
        rows stay buffered for the next try)."""
        self._write_buffered()

    def close(self) -> None:
        """Stop the thread and write what is left (idempotent; raises if the sink fails)."""
        with self._lock:
            self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        atexit.unregister(self._close_at_exit)
        self._write_buffered()

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception:
            logger.exception(
                "exposure logger: %d buffered rows lost at exit (the sink failed)", self._buffered
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._write_buffered()
            except Exception:
                # Counted and warned about already; back off a full interval before the
                # next try rather than retrying at once because rows keep arriving.
                self._stop.wait(self.flush_interval_s)

    def _write_buffered(self) -> None:
        with self._writing:
            with self._lock:
                frames = list(self._pending)
                self._pending.clear()
            if not frames:
                return
            batch: pd.DataFrame | None = None
            try:
                batch = self._valid_rows(frames)
                if batch.empty:
                    return
                self.sink.write(batch)
            except Exception as error:
                with self._lock:
                    if batch is None:
                        self._pending.extendleft(reversed(frames))
                    else:
                        self._pending.appendleft(batch)
                    self._failed_writes += 1
                    failed = self._failed_writes
                self._warn(
                    "write",
                    "exposure logger: writing %d rows failed (%d failed writes; kept for the "
                    "next try): %s",
                    self._buffered,
                    failed,
                    error,
                )
                raise
            with self._lock:
                self._written += len(batch)
                self._buffered -= len(batch)

    def _valid_rows(self, frames: list[pd.DataFrame]) -> pd.DataFrame:
        """The frames as one batch, less any frame not of the schema (dropped with an
        error): one bad caller must not block every later row behind a write that can
        never succeed."""
        batch = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        try:
            exposure_table(batch)
            return batch
        except ValueError:
            pass
        valid = []
        for frame in frames:
            try:
                exposure_table(frame)
                valid.append(frame)
            except ValueError as error:
                with self._lock:
                    self._dropped += len(frame)
                    self._buffered -= len(frame)
                logger.error(
                    "exposure logger: dropped %d rows not of the schema: %s", len(frame), error
                )
        if not valid:
            return empty_exposures()
        return pd.concat(valid, ignore_index=True)

    def _warn(self, kind: str, message: str, *args: object, exc_info: bool = False) -> None:
        """Log a warning of this kind at most once per WARNING_INTERVAL_S."""
        now = time.monotonic()
        with self._lock:
            last = self._last_warning.get(kind)
            if last is not None and now - last < WARNING_INTERVAL_S:
                return
            self._last_warning[kind] = now
        logger.warning(message, *args, exc_info=exc_info)
