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

from components.config import CandidatesConfig, RankerConfig
from components.data.split import available_at, latest_moment
from components.ids import IdPositions
from components.ranking.features import PointInTimeFeatures
from components.ranking.ranker import RankerEnsemble, TrainedRanker, load_ranker
from components.retrieval.candidate_merge import ranks_within_groups
from components.retrieval.stack import RetrievalStack, legacy_ranker_config
from components.retrieval.two_tower import TrainedTwoTower
from components.store import read_json, write_json

#: Items outside a user's candidates score below every candidate (then by popularity).
NON_CANDIDATE_OFFSET = -1.0e6
RANKED_COLUMNS = ("user_id", "item_id", "score", "rank", "source")
#: Serving moment: one microsecond after the last event, so "strictly before" keeps it.
AFTER_LAST_EVENT = pd.Timedelta(microseconds=1)


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
    ranker: TrainedRanker | RankerEnsemble | None
    #: The ranker settings the features were built with (an index refresh rebuilds them).
    feature_settings: RankerConfig
    _popularity: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    #: Positions in the last catalogue list scored (evaluation passes the same one per batch).
    _columns: tuple[Sequence[str], IdPositions] | None = field(default=None, repr=False)

    @classmethod
    def assemble(
        cls,
        stack: RetrievalStack,
        ranker: TrainedRanker | RankerEnsemble | None,
        config: RankerConfig,
    ) -> TwoStageModel:
        categories = None if ranker is None else ranker.categories
        features = feature_builder(stack, config, categories)
        return cls(stack=stack, features=features, ranker=ranker, feature_settings=config)

    def candidate_features(self, user_ids: Sequence[str]) -> pd.DataFrame:
        """Merged candidates of `user_ids` with their feature columns."""
        candidates = self.stack.candidates(user_ids)
        return self.features.transform(candidates)

    def rank(self, user_ids: Sequence[str], k: int | None = None) -> pd.DataFrame:
        """Top-k of each user's candidates: user_id, item_id, score, rank, source (the source
        that ranked the item best), ranker scores when there is a ranker."""
        ranked = self.ranked(user_ids, k)
        return pd.DataFrame(
            {
                "user_id": ranked.user_ids,
                "item_id": ranked.item_ids,
                "score": ranked.scores,
                "rank": ranked.ranks,
                "source": ranked.sources,
            },
            columns=list(RANKED_COLUMNS),
        )

    def ranked(self, user_ids: Sequence[str], k: int | None = None) -> RankedCandidates:
        """`rank` as arrays: users in request order, each user's candidates best first
        (ranker score, then fusion rank). Plain arrays all the way, as the served model
        calls this per request."""
        merged = self.stack.candidate_arrays(user_ids)
        if not len(merged):
            return RankedCandidates.empty()
        if self.ranker is None:
            scores = np.asarray(merged.score, dtype=np.float64)
        else:
            columns = self.features.feature_columns(
                merged.user_ids, merged.item_ids, merged.retrieval_columns()
            )
            scores = np.asarray(self.ranker.predict_columns(columns, len(merged)), np.float64)
        requested = IdPositions(str(user) for user in user_ids)
        user_order = requested.positions(merged.user_ids)
        order = np.lexsort((merged.rank, -scores, user_order))
        ranks = ranks_within_groups(user_order[order])
        if k is not None:
            order, ranks = order[ranks <= k], ranks[ranks <= k]
        return RankedCandidates(
            user_ids=merged.user_ids[order],
            item_ids=merged.item_ids[order],
            scores=scores[order],
            ranks=ranks.astype(np.int64),
            sources=merged.best_sources()[order],
        )

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """(users, items) scores: candidates by the ranker (or fusion), the rest below them
        in order of recent popularity."""
        users = [str(u) for u in user_ids]
        ranked = self.rank(users)
        # float32 from the start (the result's type): a batch of users x catalogue in
        # float64 would be twice the memory, then copied.
        scores = np.tile(self._fallback(item_ids).astype(np.float32), (len(users), 1))
        if len(ranked):
            rows = pd.Index(users).get_indexer(ranked["user_id"])
            cols = self._column_positions(item_ids).positions(ranked["item_id"].to_numpy())
            known = (rows >= 0) & (cols >= 0)
            # Ranks keep the ranker's order whatever the scale of its raw scores.
            values = -ranked["rank"].to_numpy(dtype=np.float32)
            scores[rows[known], cols[known]] = values[known]
        return scores

    def _column_positions(self, item_ids: Sequence[str]) -> IdPositions:
        """Positions of the catalogue list asked, built once per list object (rebuilding
        an index of 340k listings for every batch of 24 users cost more than scoring)."""
        columns = self._columns  # one read: another serving thread may swap it
        if columns is None or columns[0] is not item_ids:
            columns = (item_ids, IdPositions(np.asarray(item_ids, dtype=object)))
            self._columns = columns
        return columns[1]

    def _fallback(self, item_ids: Sequence[str]) -> np.ndarray:
        key = id(item_ids)
        cached = self._popularity.get(key)
        if cached is None or len(cached) != len(item_ids):
            popularity = self.stack.models.get("popularity")
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
        write_json(
            folder / "two_stage.json",
            {"feature_settings": self.feature_settings.model_dump(mode="json")},
        )

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
        ranker = load_ranker(folder / "ranker") if (folder / "ranker").is_dir() else None
        if (folder / "two_stage.json").is_file():
            saved = read_json(folder / "two_stage.json")["feature_settings"]
            settings = RankerConfig.model_validate(saved)
        else:  # registered before the model kept them: its stack's pipeline config has them
            legacy = legacy_ranker_config(folder / "retrieval")
            if legacy is None:
                raise ValueError(f"{folder} lacks two_stage.json: retrain to rebuild the model")
            settings = legacy
        return cls(stack=stack, features=features, ranker=ranker, feature_settings=settings)


@dataclass(frozen=True)
class RankedCandidates:
    """Ranked candidates as arrays, grouped by user in request order, best first."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    sources: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def empty(cls) -> RankedCandidates:
        return cls(
            user_ids=np.zeros(0, dtype=object),
            item_ids=np.zeros(0, dtype=object),
            scores=np.zeros(0),
            ranks=np.zeros(0, dtype=np.int64),
            sources=np.zeros(0, dtype=object),
        )


def two_stage_at(
    history: pd.DataFrame,
    items: pd.DataFrame,
    moment: pd.Timestamp | None,
    available: np.ndarray,
    *,
    candidates: CandidatesConfig,
    exclude_events: tuple[str, ...] | None,
    feature_settings: RankerConfig,
    ranker: TrainedRanker | RankerEnsemble | None,
    encoder: TrainedTwoTower | None = None,
    index_folder: Path | None = None,
) -> TwoStageModel:
    """The retrieval stack fitted on `history` before `moment` over the `available`
    listings, with `ranker` (None: fusion order) on features at that moment."""
    stack = RetrievalStack.fit(
        history,
        items,
        moment,
        available,
        candidates,
        exclude_events,
        encoder=encoder,
        index_folder=index_folder,
    )
    return TwoStageModel.assemble(stack, ranker, feature_settings)


def serving_two_stage(
    history: pd.DataFrame,
    items: pd.DataFrame,
    *,
    candidates: CandidatesConfig,
    exclude_events: tuple[str, ...] | None,
    feature_settings: RankerConfig,
    ranker: TrainedRanker | RankerEnsemble | None,
    encoder: TrainedTwoTower | None = None,
    index_folder: Path | None = None,
) -> TwoStageModel:
    """The two-stage model just after the last event of `history`, over the listings
    available then: what a retrain registers, and what an index refresh rebuilds around the
    champion's ranker (and encoder) from newer data."""
    latest = latest_moment(history, items)
    return two_stage_at(
        history,
        items,
        None if latest is None else latest + AFTER_LAST_EVENT,
        available_at(items, latest).to_numpy(bool),
        candidates=candidates,
        exclude_events=exclude_events,
        feature_settings=feature_settings,
        ranker=ranker,
        encoder=encoder,
        index_folder=index_folder,
    )


def retrieval_only(model: TwoStageModel) -> TwoStageModel:
    """The same candidates ranked by their fusion score: what the ranker must beat."""
    return TwoStageModel(
        stack=model.stack,
        features=model.features,
        ranker=None,
        feature_settings=model.feature_settings,
    )
