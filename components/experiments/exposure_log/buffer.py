"""The buffer the served model logs exposures through: the request path only appends to
memory, a background thread writes to the sink, and nothing is lost while the process
lives (failed writes are retried; `close` runs at exit)."""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time

import pandas as pd

from components.experiments.exposure_log.records import exposure_table
from components.experiments.exposure_log.sink import ExposureSink
from components.experiments.schema import (
    EXPOSURE_COLUMNS,
    REQUIRED_EXPOSURE_COLUMNS,
    empty_exposures,
)

logger = logging.getLogger(__name__)

#: Seconds between two warnings of one kind (dropped rows, failed writes).
WARNING_INTERVAL_S = 60.0


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
