"""The exposure log as a PostgreSQL table, for a team's shared server: one transaction a
write, indexed for the readout's per-experiment time ranges."""

from __future__ import annotations

import re
import threading
from typing import Any

import pandas as pd
import pyarrow as pa

from components.experiments.exposure_log.records import (
    exposure_table,
    sorted_exposures,
    utc_bound,
)
from components.experiments.exposure_log.sink import ACCEPTED_URIS
from components.experiments.schema import EXPOSURE_COLUMNS, EXPOSURE_SCHEMA, empty_exposures

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


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
                f"exposure log URL {_redacted(url)!r} is not usable ({error}): give {ACCEPTED_URIS}"
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

        start, end = utc_bound("start", start), utc_bound("end", end)
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
        return sorted_exposures(pa.Table.from_arrays(arrays, schema=EXPOSURE_SCHEMA))

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
