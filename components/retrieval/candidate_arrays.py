"""The array forms of candidates: one source's top-n (`CandidateArrays`) and the fused
candidates of the merge (`MergedCandidates`), with the candidate frame both turn into."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

CANDIDATE_COLUMNS = ("user_id", "item_id", "score", "rank")


@dataclass(frozen=True)
class CandidateArrays:
    """One source's candidates as parallel arrays (what `candidates` puts in a frame):
    user and item ids (object arrays of str), scores (float64) and 1-based ranks (int64)."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def empty(cls) -> CandidateArrays:
        return cls(
            np.zeros(0, dtype=object),
            np.zeros(0, dtype=object),
            np.zeros(0, dtype=np.float64),
            np.zeros(0, dtype=np.int64),
        )

    @classmethod
    def concat(cls, parts: Sequence[CandidateArrays]) -> CandidateArrays:
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([part.user_ids for part in parts]),
            np.concatenate([part.item_ids for part in parts]),
            np.concatenate([part.scores for part in parts]),
            np.concatenate([part.ranks for part in parts]),
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> CandidateArrays:
        return cls(
            as_strings(frame["user_id"]),
            as_strings(frame["item_id"]),
            frame["score"].to_numpy(dtype=np.float64),
            frame["rank"].to_numpy(dtype=np.int64),
        )

    def frame(self) -> pd.DataFrame:
        return _candidate_frame(self.user_ids, self.item_ids, self.scores, self.ranks)


@dataclass(frozen=True)
class MergedCandidates:
    """The fused candidates as arrays: rows grouped by user, best fusion score first."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    score: np.ndarray
    rank: np.ndarray
    n_sources: np.ndarray
    source_names: tuple[str, ...]
    #: (rows, sources) score and rank of each source, NaN where it did not return the pair.
    source_scores: np.ndarray
    source_ranks: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def empty(cls, names: Sequence[str]) -> MergedCandidates:
        return cls(
            user_ids=np.zeros(0, dtype=object),
            item_ids=np.zeros(0, dtype=object),
            score=np.zeros(0),
            rank=np.zeros(0, dtype=np.int64),
            n_sources=np.zeros(0, dtype=np.int64),
            source_names=tuple(names),
            source_scores=np.zeros((0, len(names))),
            source_ranks=np.zeros((0, len(names))),
        )

    def retrieval_columns(self) -> dict[str, np.ndarray]:
        """score, rank, n_sources, then score_<source> and rank_<source> per source."""
        columns: dict[str, np.ndarray] = {
            "score": self.score,
            "rank": self.rank,
            "n_sources": self.n_sources,
        }
        for code, name in enumerate(self.source_names):
            columns[f"score_{name}"] = self.source_scores[:, code]
            columns[f"rank_{name}"] = self.source_ranks[:, code]
        return columns

    def best_sources(self) -> np.ndarray:
        """Per row, the source that ranked the item best (first source on ties)."""
        if not self.source_names:
            return np.full(len(self), "retrieval", dtype=object)
        ranks = np.where(np.isnan(self.source_ranks), np.inf, self.source_ranks)
        return np.asarray(self.source_names, dtype=object)[ranks.argmin(axis=1)]

    def frame(self) -> pd.DataFrame:
        frame = _candidate_frame(self.user_ids, self.item_ids, self.score, self.rank)
        columns = self.retrieval_columns()
        frame["n_sources"] = columns.pop("n_sources")
        for name in ("score", "rank"):
            columns.pop(name)
        for name, values in columns.items():
            frame[name] = values
        return frame


def empty_candidates() -> pd.DataFrame:
    return CandidateArrays.empty().frame()


def _candidate_frame(
    users: np.ndarray, items: np.ndarray, scores: np.ndarray, ranks: np.ndarray
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": pd.array(users, dtype="string"),
            "item_id": pd.array(items, dtype="string"),
            "score": np.asarray(scores, dtype=np.float64),
            "rank": np.asarray(ranks, dtype=np.int64),
        }
    )


def as_strings(values: pd.Series | np.ndarray) -> np.ndarray:
    """Ids as an object array of str (what every source and the merge key on)."""
    if isinstance(getattr(values, "dtype", None), pd.StringDtype):
        return np.asarray(values, dtype=object)
    return np.array([str(value) for value in np.asarray(values, dtype=object)], dtype=object)
