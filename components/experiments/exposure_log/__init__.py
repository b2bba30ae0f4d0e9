"""The exposure log: where every served slot is written, and the buffer the served model
logs through.

Two sinks hold the same rows (`EXPOSURE_SCHEMA`): a day-partitioned Parquet dataset on a
local folder or any filesystem Arrow reaches (S3, GCS, ...), and a PostgreSQL table. Each
`write` is one atomic unit, so a reader never sees half of a batch and a retried batch is
never counted twice. `ExposureLogger` sits in front of a sink: the request path only
appends to memory, a background thread writes, and nothing is lost while the process lives
(failed writes are retried; `close` runs at exit).

What is where: the checked conversion to Arrow and the read order in `records`, the sink
protocol in `sink`, the two sinks in `parquet` and `postgres`, the choice of sink by URI in
`uris`, the buffer in `buffer`.
"""

from __future__ import annotations

from components.experiments.exposure_log.buffer import ExposureLogger
from components.experiments.exposure_log.parquet import ParquetExposureSink
from components.experiments.exposure_log.postgres import PostgresExposureSink
from components.experiments.exposure_log.records import exposure_table
from components.experiments.exposure_log.sink import ExposureSink
from components.experiments.exposure_log.uris import open_exposure_sink, read_exposures

__all__ = [
    "ExposureLogger",
    "ExposureSink",
    "ParquetExposureSink",
    "PostgresExposureSink",
    "exposure_table",
    "open_exposure_sink",
    "read_exposures",
]
