"""The two-stage recommender: retrieval stack -> point-in-time features -> LightGBM -> top-K.

One class answers offline evaluation (`score`, the `Scorer` protocol over a catalogue) and
served requests (`rank`); the bundle saves and loads it as folders of native formats. With
no ranker it ranks the merged candidates by their fusion score ("retrieval only"), which is
what the re-ranked model is compared against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import RankerConfig
from components.ranking.features import PointInTimeFeatures
from components.ranking.ranker import TrainedRanker
from components.retrieval.stack import RetrievalStack

#: Items outside a user's candidates score below every candidate (then by popularity).
NON_CANDIDATE_OFFSET = -1.0e6
RANKED_COLUMNS = ("user_id", "item_id", "score", "rank", "source")


def feature_builder(
    stack: RetrievalStack, config: RankerConfig, categories: dict[str, list[str]] | None = None
) -> PointInTimeFeatures:
    """The features at the stack's moment, with its two-tower vectors when it has them."""
    vectors = stack.vectors
    return PointInTimeFeatures.build(
        stack.history,
        stack.items,
        stack.moment,
        config,
        categories=categories,
        user_vectors=None if vectors is None else vectors.user_vectors,
        item_vectors=None if vectors is None else vectors.item_vectors,
    )


@dataclass
class TwoStageModel:
    stack: RetrievalStack
    features: PointInTimeFeatures
    ranker: TrainedRanker | None
    _popularity: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def assemble(
        cls, stack: RetrievalStack, ranker: TrainedRanker | None, config: RankerConfig
    ) -> TwoStageModel:
        categories = None if ranker is None else ranker.categories
        return cls(stack=stack, features=feature_builder(stack, config, categories), ranker=ranker)

    def candidate_features(self, user_ids: Sequence[str]) -> pd.DataFrame:
        """Merged candidates of `user_ids` with their feature columns."""
        candidates = self.stack.candidates(user_ids)
        return self.features.transform(candidates)

    def rank(self, user_ids: Sequence[str], k: int | None = None) -> pd.DataFrame:
        """Top-k of each user's candidates: user_id, item_id, score, rank, source (the source
        that ranked the item best), ranker scores when there is a ranker."""
        candidates = self.stack.candidates(user_ids)
        if not len(candidates):
            return pd.DataFrame({column: [] for column in RANKED_COLUMNS})
        if self.ranker is None:
            scores = candidates["score"].to_numpy(dtype=float)
        else:
            scores = self.ranker.predict(self.features.transform(candidates))
        frame = pd.DataFrame(
            {
                "user_id": candidates["user_id"].astype(str).to_numpy(dtype=object),
                "item_id": candidates["item_id"].astype(str).to_numpy(dtype=object),
                "score": scores,
                "_fusion_rank": candidates["rank"].to_numpy(),
                "source": best_sources(candidates),
            }
        )
        frame = frame.sort_values(
            ["user_id", "score", "_fusion_rank"], ascending=[True, False, True], kind="stable"
        )
        frame["rank"] = frame.groupby("user_id", sort=False).cumcount() + 1
        if k is not None:
            frame = frame[frame["rank"] <= k]
        order = pd.Index(pd.unique(np.asarray([str(u) for u in user_ids], dtype=object)))
        frame = frame.iloc[np.argsort(order.get_indexer(frame["user_id"]), kind="stable")]
        return frame[list(RANKED_COLUMNS)].reset_index(drop=True)

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """(users, items) scores: candidates by the ranker (or fusion), the rest below them
        in order of recent popularity."""
        users = [str(u) for u in user_ids]
        ranked = self.rank(users)
        scores = np.tile(self._fallback(item_ids), (len(users), 1))
        if len(ranked):
            rows = pd.Index(users).get_indexer(ranked["user_id"])
            cols = pd.Index(np.asarray(item_ids, dtype=object)).get_indexer(ranked["item_id"])
            known = (rows >= 0) & (cols >= 0)
            # Ranks keep the ranker's order whatever the scale of its raw scores.
            values = -ranked["rank"].to_numpy(dtype=np.float64)
            scores[rows[known], cols[known]] = values[known]
        return scores.astype(np.float32)

    def _fallback(self, item_ids: Sequence[str]) -> np.ndarray:
        key = id(item_ids)
        cached = self._popularity.get(key)
        if cached is None or len(cached) != len(item_ids):
            popularity = self.stack.baselines.get("popularity")
            base = np.zeros(len(item_ids))
            if popularity is not None:
                base = np.asarray(popularity.score(["_"], list(item_ids)), dtype=float)[0]
                top = base.max() if len(base) else 0.0
                base = base / top if top > 0 else base
            cached = NON_CANDIDATE_OFFSET + base
            self._popularity = {key: cached}
        return cached

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        self.stack.save(folder / "retrieval")
        self.features.save(folder / "features")
        if self.ranker is not None:
            self.ranker.save(folder / "ranker")

    @classmethod
    def load(cls, folder: Path) -> TwoStageModel:
        folder = Path(folder)
        stack = RetrievalStack.load(folder / "retrieval")
        vectors = stack.vectors
        features = PointInTimeFeatures.load(
            folder / "features",
            user_vectors=None if vectors is None else vectors.user_vectors,
            item_vectors=None if vectors is None else vectors.item_vectors,
        )
        ranker = TrainedRanker.load(folder / "ranker") if (folder / "ranker").is_dir() else None
        return cls(stack=stack, features=features, ranker=ranker)


def best_sources(candidates: pd.DataFrame) -> np.ndarray:
    """Per merged candidate, the source that ranked it best (first source on ties)."""
    names = [c.removeprefix("rank_") for c in candidates.columns if c.startswith("rank_")]
    if not names:
        return np.full(len(candidates), "retrieval", dtype=object)
    ranks = candidates[[f"rank_{name}" for name in names]].to_numpy(dtype=float)
    ranks = np.where(np.isnan(ranks), np.inf, ranks)
    return np.asarray(names, dtype=object)[ranks.argmin(axis=1)]
