"""Each known user's ranked list, computed once when the bundle is written.

A bundle is immutable, so the two-stage answer of a known user without a session depends
only on the bundle and on what the request excludes: the ranker orders the user's
candidates, the bundle's availability and the user's masked items are dropped, popularity
fills a short list, and the request's `exclude_item_ids` are dropped from that same order
(`BundleRecommender._rank_two_stage`). The bundle therefore carries each user's first
`depth` answers with the bundle's own masks applied, and a request takes the first k that
its exclusions leave: the answer the ranker gives live. A request is ranked live when
k > depth, or when its exclusions leave fewer than k of a full list.

The lists are batch-ranked (`TwoStageModel.ranked` over many users, the same call offline
evaluation makes), about 3 ms per user once per bundle, where a request ranked live costs
about 7 ms: the two-stage model's cost leaves the request path (docs/serving.md). Users
beyond `max_users` (the least recently active) are ranked live.

Files (under `ranked_lists/` in the bundle, no pickles): `users.parquet` (one row per
user, the row of the arrays), `rows.npy` (catalogue rows, -1 past a short list's end),
`scores.npy`, `sources.npy` (codes into `lists.json`'s `sources`) and `lists.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.store import read_json, write_json

RANKED_LISTS_DIR = "ranked_lists"
LISTS_FORMAT = 1


@dataclass(frozen=True)
class RankedLists:
    """Users' answers without request exclusions, best first, as (users, depth) arrays."""

    user_rows: dict[str, int]
    #: Catalogue rows (the bundle's items.parquet order); -1 past the end of a short list.
    rows: np.ndarray
    scores: np.ndarray
    #: Codes into `source_names`.
    sources: np.ndarray
    source_names: np.ndarray
    #: How many users the settings would have covered, and the settings.
    metadata: dict[str, object]

    @property
    def depth(self) -> int:
        return int(self.rows.shape[1])

    def __len__(self) -> int:
        return len(self.user_rows)

    def answer(
        self, user_id: str, k: int, blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """The user's first `k` catalogue rows not `blocked`, their scores and sources, or
        None when the list cannot say (unknown user, k > depth, a full list left short)."""
        at = self.user_rows.get(user_id)
        if at is None:
            return None
        rows = self.rows[at]
        rows = rows[: int(np.count_nonzero(rows >= 0))]
        keep = first_unblocked(rows, k, blocked, self.depth)
        if keep is None:
            return None
        names = self.source_names[self.sources[at, keep]]
        return rows[keep].astype(np.int64), self.scores[at, keep], names.tolist()

    #: What `lists.json` holds besides `metadata`, derived from the arrays.
    DERIVED = ("format", "depth", "users", "sources")

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        users = sorted(self.user_rows, key=self.user_rows.__getitem__)
        pd.DataFrame({"user_id": pd.Series(users, dtype="string")}).to_parquet(
            folder / "users.parquet", index=False
        )
        np.save(folder / "rows.npy", self.rows, allow_pickle=False)
        np.save(folder / "scores.npy", self.scores, allow_pickle=False)
        np.save(folder / "sources.npy", self.sources, allow_pickle=False)
        write_json(
            folder / "lists.json",
            {
                "format": LISTS_FORMAT,
                "depth": self.depth,
                "users": len(self),
                "sources": [str(name) for name in self.source_names],
                **self.metadata,
            },
        )

    @classmethod
    def load(cls, folder: Path) -> RankedLists:
        """Read the lists (memory-mapped: a worker pages in the users it is asked for)."""
        folder = Path(folder)
        described = read_json(folder / "lists.json")
        if described.get("format") != LISTS_FORMAT:
            raise ValueError(
                f"{folder} holds ranked lists of format {described.get('format')}; this code "
                f"reads {LISTS_FORMAT}: retrain, or refresh the index, to rewrite them"
            )
        users = pd.read_parquet(folder / "users.parquet")["user_id"].astype(str).tolist()
        arrays = {
            name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            for name in ("rows", "scores", "sources")
        }
        kept = {key: value for key, value in described.items() if key not in cls.DERIVED}
        return cls(
            user_rows={user: row for row, user in enumerate(users)},
            rows=arrays["rows"],
            scores=arrays["scores"],
            sources=arrays["sources"],
            source_names=np.asarray(described["sources"], dtype=object),
            metadata=kept,
        )


def first_unblocked(rows: np.ndarray, k: int, blocked: np.ndarray, depth: int) -> np.ndarray | None:
    """Positions of the first `k` of `rows` (an answer cut at `depth`, best first) that are
    not `blocked`, or None when the cut list cannot tell: k above the depth, or fewer than
    k left of a full list (what followed the cut is unknown). A list shorter than the
    depth was the whole answer, so what it leaves is all there is."""
    if k > depth:
        return None
    keep = np.flatnonzero(~blocked[rows])[:k]
    if len(keep) < k and len(rows) >= depth:
        return None
    return keep


def lists_from_answers(
    answers: dict[str, tuple[np.ndarray, np.ndarray, list[str]]],
    depth: int,
    metadata: dict[str, object],
) -> RankedLists:
    """Pack per-user answers (catalogue rows, scores, sources; at most `depth` each)."""
    users = list(answers)
    rows = np.full((len(users), depth), -1, dtype=np.int32)
    scores = np.zeros((len(users), depth), dtype=np.float64)
    names = sorted({source for _, _, sources in answers.values() for source in sources})
    codes = {name: code for code, name in enumerate(names)}
    sources = np.zeros((len(users), depth), dtype=np.int16)
    for at, user in enumerate(users):
        order, values, found = answers[user]
        rows[at, : len(order)] = order
        scores[at, : len(order)] = values
        sources[at, : len(order)] = [codes[name] for name in found]
    return RankedLists(
        user_rows={user: at for at, user in enumerate(users)},
        rows=rows,
        scores=scores,
        sources=sources,
        source_names=np.asarray(names, dtype=object),
        metadata=metadata,
    )
