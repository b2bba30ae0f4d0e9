"""The evaluation's settings (`evaluation`) and vocabulary: the metric names a config is
checked against at load (components.evaluation computes them; tests tie both together).
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from components.config.base import Duration, StrictModel
from components.config.retrieval import CovisitationConfig, EaseConfig, IalsConfig, PopularityConfig

#: The evaluation's vocabulary, here so that a config can be checked against it at load
#: (components.evaluation computes them; tests tie both together):
#: per-user accuracy metrics, list-level beyond-accuracy figures, the metrics compared to
#: each baseline with a paired bootstrap, and the exposure figures compared the same way
#: (the promotion gate's exposure guard reads them).
ACCURACY_METRICS = ("recall", "ndcg", "capped_recall", "precision", "hit_rate", "mrr", "map")
FAIRNESS_METRICS = (
    "coverage",
    "novelty",
    "diversity",
    "gini_items",
    "gini_sellers",
    "new_item_exposure",
    "small_seller_exposure",
)
COMPARED_METRICS = ("ndcg@10", "recall@20", "ndcg@20", "recall@100")
COMPARED_EXPOSURE = ("gini_sellers@20", "new_item_exposure@20")


def metric_k(metric: str) -> int:
    """The K of a `name@K` metric key."""
    return int(metric.rsplit("@", 1)[1])


class BaselinesConfig(StrictModel):
    """Baselines that always run beside the model (docs/evaluation.md): yardsticks with their own
    settings, fitted on the same history as the model; never a candidate source."""

    enabled: tuple[Literal["popularity", "covisitation", "linear"], ...] = (
        "popularity",
        "covisitation",
        "linear",
    )
    popularity: PopularityConfig = PopularityConfig(half_life=None, event_weights={})
    covisitation: CovisitationConfig = CovisitationConfig()
    #: `linear` is EASE when the catalogue fits (ease.max_items), iALS otherwise.
    ease: EaseConfig = EaseConfig()
    ials: IalsConfig = IalsConfig()


class EvaluationConfig(StrictModel):
    ks: tuple[int, ...] = (10, 20, 100)
    #: Test events that count as positives; null = every event type.
    positive_events: tuple[str, ...] | None = None
    #: Items a user had these events with before the cut-off are masked from their list.
    mask_events: tuple[str, ...] = ("purchase",)
    #: Mask every item the user interacted with before the cut-off (fixed-split protocol).
    mask_all_seen: bool = False
    baselines: BaselinesConfig = BaselinesConfig()
    #: Users with at most this many history interactions form the `cold_users` segment.
    cold_user_max_interactions: int = Field(5, ge=0)
    #: Listings created at most this long before the cut-off form the `new_items` segment.
    new_item_age: Duration = "7D"
    #: A seller with at most this many listings counts as small (exposure fairness).
    small_seller_max_listings: int = Field(3, ge=1)
    bootstrap_resamples: int = Field(1000, ge=10)
    #: Windows with more users than this are evaluated on a seeded sample of this many
    #: (the report names both counts; the bootstrap intervals carry the sampling
    #: uncertainty). Full ranking costs users x items; this bounds the users. Null: all.
    #: 50k evaluates every user of the public benchmarks (Gowalla: 29,858).
    max_users: int | None = Field(50_000, ge=1)
    #: Seed of that sample: the same window always gives the same users.
    users_sample_seed: int = 0

    @property
    def excluded_events(self) -> tuple[str, ...] | None:
        """The history events whose items a user's list leaves out (None: every item the
        user interacted with), what retrieval filters with."""
        return None if self.mask_all_seen else tuple(self.mask_events)

    @model_validator(mode="after")
    def _positive_ks(self) -> EvaluationConfig:
        if not self.ks or any(k <= 0 for k in self.ks):
            raise ValueError("evaluation.ks must be a non-empty list of positive integers")
        return self
