"""The ranking layer's settings: the LightGBM ranker (`model.ranker`) and the registered
recommender they make together with retrieval (`model`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from components.config.base import Duration, StrictModel
from components.config.retrieval import (
    AnnoyConfig,
    CandidatesConfig,
    PopularityConfig,
    TwoTowerConfig,
)


class LabelHoldout(StrictModel):
    """Fixed split: the share of each user's training interactions the ranker learns its
    labels on, and the seed that picks them (the encoder of the label stage never sees
    them, so it is trained on the rest)."""

    share: float
    seed: int


class RankerConfig(StrictModel):
    """The LightGBM learning-to-rank stage (components.ranking) over the merged candidates.

    Labels come from a window after the data its candidates and features see: the valid
    window (temporal protocol) or a random `holdout_share` of each user's training
    interactions (fixed split). Early stopping uses `early_stopping_user_share` of the label
    users, never the test window.
    """

    enabled: bool = True
    objective: Literal["lambdarank", "rank_xendcg"] = "lambdarank"
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(31, ge=2)
    min_data_in_leaf: int = Field(50, ge=1)
    feature_fraction: float = Field(0.8, gt=0, le=1)
    lambda_l2: float = Field(1.0, ge=0)
    max_rounds: int = Field(500, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    #: NDCG@K that early stopping watches.
    eval_at: int = Field(10, ge=1)
    #: Negatives kept per query (random, seeded); every positive is kept.
    max_negatives: int = Field(100, ge=1)
    #: Hard cap on rows per query (LightGBM's lambdarank limit is 10,000).
    max_rows_per_query: int = Field(10_000, ge=2, le=10_000)
    early_stopping_user_share: float = Field(0.2, gt=0, lt=1)
    #: Temporal protocol: how many label windows the ranker learns from: the valid window
    #: and the `label_windows - 1` windows of the same length just before it, each with the
    #: history before its own start. More windows, more queries (for data with few active
    #: users per window). With the two-tower source each earlier window gets an encoder
    #: of its own, fitted on the history before it (one more encoder fit per window).
    label_windows: int = Field(1, ge=1, le=12)
    #: Fixed split only: share of each user's training interactions held out as labels.
    holdout_share: float = Field(0.2, gt=0, lt=1)
    #: Graded relevance of the label events (max over a pair's events); ratings >= 4 get
    #: `rating_high`, other ratings `rating_low`.
    grades: dict[str, int] = Field(
        default_factory=lambda: {
            "purchase": 4,
            "add_to_bag": 3,
            "save": 3,
            "like": 2,
            "view": 1,
            "interaction": 1,
        }
    )
    rating_high: int = Field(2, ge=1)
    rating_low: int = Field(1, ge=1)
    #: How many of the user's last items the "similar to recent" feature compares with.
    recent_items: int = Field(5, ge=1)
    #: Windows of the item's graded-popularity features (i_pop_<window>, pandas offsets),
    #: besides all time: match them to how fast the catalogue turns over.
    popularity_windows: tuple[Duration, ...] = ("1D", "7D", "28D")
    num_threads: int = Field(2, ge=1)
    seed: int = 0
    #: Rankers trained with seeds seed, seed + 1, ... (each with its own early-stopping
    #: users and negatives) whose scores are averaged: on data with a few hundred label
    #: users a single ranker's quality varies with its seed as much as with any setting.
    ensemble_size: int = Field(1, ge=1, le=20)
    #: A Dask scheduler address (e.g. tcp://host:8786): train with DaskLGBMRanker there.
    dask_address: str | None = None

    @property
    def label_holdout(self) -> LabelHoldout:
        """The holdout the label stage and its encoder share (fixed split)."""
        return LabelHoldout(share=self.holdout_share, seed=self.seed)

    @field_validator("dask_address")
    @classmethod
    def _dask_address_is_a_url(cls, address: str | None) -> str | None:
        if address is not None and not re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", address):
            raise ValueError(
                f"{address!r} is not a Dask scheduler address; write e.g. tcp://host:8786"
            )
        return address

    @model_validator(mode="after")
    def _popularity_windows_are_distinct(self) -> RankerConfig:
        names = [window.lower() for window in self.popularity_windows]
        if len(set(names)) < len(names):
            raise ValueError(f"model.ranker.popularity_windows repeats a window: {names}")
        return self


class ModelConfig(StrictModel):
    """The registered recommender: candidates from every source in `candidates.sources`
    (the two-tower encoder and its Annoy index among them), merged, then re-ranked by the
    LightGBM ranker when `ranker.enabled` (otherwise served in fusion order). Recent
    popularity (`popularity`) answers unknown users and fills short lists."""

    popularity: PopularityConfig = PopularityConfig()
    two_tower: TwoTowerConfig = TwoTowerConfig()
    annoy: AnnoyConfig = AnnoyConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    ranker: RankerConfig = RankerConfig()
    #: Register a model refitted on all snapshot data (evaluation always uses the held-out fit).
    refit_on_all_data: bool = True

    @model_validator(mode="before")
    @classmethod
    def _retired_keys(cls, raw: Any) -> Any:
        """Configs written for the old vocabulary fail with the words that replaced it."""
        if not isinstance(raw, dict):
            return raw
        if "kind" in raw:
            raise ValueError(
                "model.kind was replaced: list the candidate models in "
                "model.candidates.sources (e.g. [two_tower, covisitation, popularity, "
                "category_popularity, linear]; two_tower trains the encoder and builds the "
                "Annoy index) and turn the LightGBM ranker on or off with "
                "model.ranker.enabled"
            )
        candidates = raw.get("candidates")
        sources = candidates.get("sources") if isinstance(candidates, dict) else None
        if isinstance(sources, list | tuple) and "ann" in sources:
            raise ValueError(
                "model.candidates.sources: the source 'ann' is now called 'two_tower' "
                "(the two-tower encoder through the Annoy index)"
            )
        return raw

    @property
    def uses_two_tower(self) -> bool:
        """Whether the retrain trains the encoder and builds the Annoy index."""
        return "two_tower" in self.candidates.sources

    def describe(self) -> dict[str, Any]:
        """What the registered model is, for reports, run params and version tags."""
        ranked = self.ranker.enabled
        return {
            "kind": "two_stage" if ranked else "retrieval_fusion",
            "sources": list(self.candidates.sources),
            "ranker": "lightgbm" if ranked else None,
        }

    def summary(self) -> str:
        """One line, e.g. `two_stage: two_tower+covisitation -> lightgbm`."""
        return recommender_line(self.describe())


def recommender_line(described: dict[str, Any]) -> str:
    """`ModelConfig.describe()` (or a report's `recommender`) as one line."""
    line = f"{described.get('kind', '?')}: {'+'.join(described.get('sources', []))}"
    return line + (f" -> {described['ranker']}" if described.get("ranker") else "")
