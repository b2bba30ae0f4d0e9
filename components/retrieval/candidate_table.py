"""Merged candidates kept for a set of users and served again by user (`CandidateTable`),
read from the parquet file their frames were written to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from components.ids import IdPositions
from components.retrieval.candidate_arrays import MergedCandidates, as_strings


@dataclass(frozen=True)
class CandidateTable:
    """Merged candidates computed earlier for a set of users, served again by user: the
    run's test candidates, generated once and then read by the evaluation of the model and
    of its retrieval-only order instead of running every source again."""

    merged: MergedCandidates
    users: IdPositions
    starts: np.ndarray
    stops: np.ndarray

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> CandidateTable:
        """From `MergedCandidates.frame()`: rows grouped by user."""
        names = tuple(c[len("rank_") :] for c in frame.columns if c.startswith("rank_"))
        return cls.from_merged(
            MergedCandidates(
                user_ids=as_strings(frame["user_id"]),
                item_ids=as_strings(frame["item_id"]),
                score=frame["score"].to_numpy(np.float64),
                rank=frame["rank"].to_numpy(np.int64),
                n_sources=frame["n_sources"].to_numpy(np.int64),
                source_names=names,
                source_scores=frame[[f"score_{n}" for n in names]].to_numpy(np.float64),
                source_ranks=frame[[f"rank_{n}" for n in names]].to_numpy(np.float64),
            )
        )

    @classmethod
    def read(cls, path: Path) -> CandidateTable:
        """From the parquet file `MergedCandidates.frame()` chunks were written to, one
        column at a time and without a frame: ids point into one string per distinct id
        instead of a string per row, so the table costs its numbers and little more."""
        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
        names = tuple(c[len("rank_") :] for c in columns if c.startswith("rank_"))
        rows = parquet.metadata.num_rows

        def numbers(column: str, dtype: type) -> np.ndarray:
            values = parquet.read(columns=[column]).column(0)
            return values.to_numpy().astype(dtype, copy=False) if rows else np.zeros(0, dtype)

        def matrix(prefix: str) -> np.ndarray:
            out = np.empty((rows, len(names)))
            for position, name in enumerate(names):
                out[:, position] = numbers(f"{prefix}{name}", np.float64)
            return out

        def ids(column: str) -> np.ndarray:
            encoded = parquet.read(columns=[column]).column(0).dictionary_encode()
            encoded = encoded.combine_chunks() if encoded.num_chunks else encoded
            if not rows:
                return np.zeros(0, dtype=object)
            strings = np.array([str(v) for v in encoded.dictionary.to_pylist()], dtype=object)
            return strings[encoded.indices.to_numpy(zero_copy_only=False)]

        return cls.from_merged(
            MergedCandidates(
                user_ids=ids("user_id"),
                item_ids=ids("item_id"),
                score=numbers("score", np.float64),
                rank=numbers("rank", np.int64),
                n_sources=numbers("n_sources", np.int64),
                source_names=names,
                source_scores=matrix("score_"),
                source_ranks=matrix("rank_"),
            )
        )

    @classmethod
    def from_merged(cls, merged: MergedCandidates) -> CandidateTable:
        codes, uniques = pd.factorize(merged.user_ids)
        if len(codes) and (np.diff(codes) < 0).any():
            raise ValueError("a candidate table needs its rows grouped by user")
        bounds = np.flatnonzero(np.diff(codes)) + 1
        starts = np.concatenate([[0], bounds]).astype(np.int64)
        stops = np.concatenate([bounds, [len(codes)]]).astype(np.int64)
        return cls(merged, IdPositions(uniques), starts, stops)

    def take(self, user_ids: Sequence[str]) -> MergedCandidates | None:
        """The candidates of `user_ids`, in their order (None: a user is not in the table,
        so the caller runs the sources)."""
        positions = self.users.positions(np.asarray(user_ids, dtype=object))
        if (positions < 0).any():
            return None
        lengths = self.stops[positions] - self.starts[positions]
        offsets = np.repeat(self.starts[positions] - np.cumsum(lengths) + lengths, lengths)
        rows = offsets + np.arange(int(lengths.sum()))
        m = self.merged
        return MergedCandidates(
            user_ids=m.user_ids[rows],
            item_ids=m.item_ids[rows],
            score=m.score[rows],
            rank=m.rank[rows],
            n_sources=m.n_sources[rows],
            source_names=m.source_names,
            source_scores=m.source_scores[rows],
            source_ranks=m.source_ranks[rows],
        )
