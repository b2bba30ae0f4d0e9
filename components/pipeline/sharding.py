"""Per-user stages cut into shards of users: plan -> one shard step per shard -> combine.

A per-user stage (test candidates, label-stage features, evaluation) is three plain steps:

- `plan` fits what every shard shares (a retrieval stack, saved), cuts the stage's users
  into shards of at most `execution.shard_users` (`shard_ranges`) and returns them in its
  JSON result (`{"shards": [{"number": 0, "start": 0, "stop": 4096, ...}, ...]}`);
- `shard` does one shard's users (a chunk of `model.candidates.chunk_users` at a time) and
  writes its own parquet part under `run_dir/shards/<stage>/<number>` (atomically); its
  result holds the partial figures (counts, per-chunk sums) and where it ran;
- `combine` adds the partial figures up in shard order, exactly as one loop over every
  user would have, and publishes the stage's folder atomically.

`ShardedStep` bundles them; `components.pipeline.chain.Stages.sharded` runs them: directly
(one shard after the other, `run_sharded`) or, in the flow, each shard as a Prefect task on
the flow's task runner (Dask workers with REWEAR_TASK_RUNNER=dask). Shards are whole chunks
(and whole evaluation batches): the users go through the same batches as in one loop, so
the figures are the same whatever the number of shards or where they ran.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from components.store import atomic_directory

#: One shard: `number`, its users' positions [`start`, `stop`) in the stage's order, and
#: what else its plan adds (the label stages: `label_stage`). Plain JSON.
Shard = dict[str, Any]


@dataclass(frozen=True)
class ShardedStep:
    """A per-user stage's three steps, under the stage's `name`. Each takes the stage's own
    arguments by keyword, and: plan `run_dir`, shard `plan, shard, run_dir`, combine
    `plan, parts, run_dir`; every result is plain JSON."""

    name: str
    plan: Callable[..., Any]
    shard: Callable[..., Any]
    combine: Callable[..., Any]


def shard_size(shard_users: int, unit: int) -> int:
    """Users per shard: `shard_users` rounded down to whole `unit`s (chunks, batches) when it
    holds at least one, so that a shard's chunks are the chunks of one loop over all users."""
    unit = max(1, unit)
    return shard_users if shard_users < unit else shard_users // unit * unit


def shard_ranges(n_users: int, shard_users: int, unit: int = 1, **extra: Any) -> list[Shard]:
    """Consecutive shards covering `n_users` positions; no users: one empty shard (the
    stage still runs once, as its single loop would)."""
    size = shard_size(shard_users, unit)
    bounds = [(start, min(start + size, n_users)) for start in range(0, n_users, size)]
    return [
        {"number": number, "start": start, "stop": stop, **extra}
        for number, (start, stop) in enumerate(bounds or [(0, 0)])
    ]


def chunk_starts(shard: Mapping[str, int], chunk_users: int) -> range:
    """Where a shard's chunks start; an empty shard has one (empty) chunk."""
    start, stop = shard["start"], shard["stop"]
    return range(start, max(stop, start + 1), max(1, chunk_users))


def run_sharded(steps: ShardedStep, /, *, run_dir: Path, **arguments: Any) -> Any:
    """The stage in this process: plan, every shard in order, combine."""
    plan = steps.plan(**arguments, run_dir=run_dir)
    parts = [
        steps.shard(**arguments, plan=plan, shard=shard, run_dir=run_dir)
        for shard in plan["shards"]
    ]
    return steps.combine(**arguments, plan=plan, parts=parts, run_dir=run_dir)


def shard_folder(run_dir: Path, stage: str, shard: Mapping[str, int]) -> Path:
    """Where a shard writes its part (its own folder, published atomically)."""
    return Path(run_dir) / "shards" / stage / f"{shard['number']:05d}"


def where_it_ran() -> dict[str, Any]:
    """The host, process and Dask worker (None outside one) a shard ran in."""
    worker = None
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        pass
    return {"host": socket.gethostname(), "pid": os.getpid(), "worker": worker}


class RecallSums:
    """`candidate_recall` figures of chunks of users, added up in order as
    `components.retrieval.candidate_recall.ChunkedRecall` does (each chunk's figure weighted by its
    users with positives): a shard keeps its chunks' figures (`chunks`, JSON), the combine
    replays every shard's in order, so the sums are the same floats as one loop's."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._users = 0

    def add(self, figures: Mapping[str, float], users: int) -> None:
        for name, value in figures.items():
            self._sums[name] = self._sums.get(name, 0.0) + value * users
        self._users += users

    def replay(self, chunks: Iterable[Mapping[str, Any]]) -> RecallSums:
        for chunk in chunks:
            self.add(chunk["recall"], chunk["users"])
        return self

    def result(self) -> dict[str, float]:
        """Per source and `combined`, rounded to 4 places (what the report shows)."""
        return {name: round(total / self._users, 4) for name, total in self._sums.items()}


def concatenate_parts(parts: Sequence[Path], target: Path) -> int:
    """The parquet `parts` appended, in order and row group by row group, to one file with
    the first part's schema (what one `ParquetAppender` over every chunk writes); parts
    that were never written (no rows) are skipped, and without any no file is written.
    Returns the rows written."""
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for part in parts:
            if not Path(part).is_file():
                continue
            parquet = pq.ParquetFile(part)
            if writer is None:
                writer = pq.ParquetWriter(target, parquet.schema_arrow)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group)
                writer.write_table(table.cast(writer.schema))
                rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def publish_shard(run_dir: Path, stage: str, shard: Mapping[str, int]) -> Any:
    """`atomic_directory` of a shard's folder: a killed shard leaves no half-written part."""
    return atomic_directory(shard_folder(run_dir, stage, shard), overwrite=True)
