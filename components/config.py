"""Pipeline configuration: one frozen pydantic model per stage, one YAML file per pipeline.

Unknown keys are refused so that a typo in a YAML file fails loudly instead of being ignored.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def positive_duration(value: Any) -> str:
    """A pandas duration string above zero with a unit ('7D', '12h', '30min'), as every
    window, half-life and gap of the pipeline is read with `pd.Timedelta`."""
    import pandas as pd  # only here: the config module stays light to import

    example = "write e.g. '7D', '12h' or '30min'"
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration; {example}")
    if not re.search(r"[A-Za-z]", value):
        raise ValueError(f"{value!r} has no unit (pandas would read nanoseconds); {example}")
    try:
        positive = bool(pd.Timedelta(value) > pd.Timedelta(0))
    except ValueError:
        positive = False
    if not positive:
        raise ValueError(f"{value!r} is not a positive duration; {example}")
    return value


def calendar_date(value: Any) -> str:
    """A date or timestamp string pandas parses ('2026-01-01')."""
    import pandas as pd

    try:
        pd.Timestamp(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a date; write e.g. '2026-01-01'") from None
    return str(value)


#: Characters a registered model name may hold: it goes into `models:/<name>@<alias>` URIs
#: and the artifact store's folders, where '/' or '..' would point elsewhere.
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"


def model_name(value: Any) -> str:
    """A registry or dataset name: letters, digits, '.', '_' and '-', starting with a
    letter or digit, at most 100 characters."""
    if not isinstance(value, str) or not re.fullmatch(MODEL_NAME_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a valid name: use letters, digits, '.', '_' and '-', starting "
            "with a letter or digit, at most 100 characters (e.g. 'rewear')"
        )
    return value


Duration = Annotated[str, BeforeValidator(positive_duration)]
CalendarDate = Annotated[str, BeforeValidator(calendar_date)]
Name = Annotated[str, BeforeValidator(model_name)]


class SyntheticSourceConfig(StrictModel):
    """The built-in synthetic marketplace (see components.data.synthetic).

    The defaults give about 4k users, 30k listings and 430k events in a few seconds: big
    enough for every model to find real signal, small enough for the demo run. Supply
    (sellers, listings) left null scales with `n_users`, so that overriding only
    `n_users` keeps the market balanced (most listings still sell within days).
    """

    kind: Literal["synthetic"] = "synthetic"
    seed: int = 7
    n_users: int = Field(4_000, ge=10)
    #: Sellers; listing counts per seller are long-tailed (a few power sellers).
    #: Null: 0.75 per user.
    n_sellers: int | None = Field(None, ge=2)
    n_days: int = Field(60, ge=7)
    #: Mean new listings per day (Poisson, busier at weekends). Null: 0.1125 per user.
    listings_per_day: int | None = Field(None, ge=5)
    #: Mean sessions per joined user per day (scaled by each user's activity level).
    sessions_per_user_day: float = Field(0.35, gt=0, le=5)
    #: Mean listings viewed per session (1 + Poisson).
    views_per_session: float = Field(6.0, gt=0)
    start: CalendarDate = "2026-01-01"
    #: Listings already live at `start`, created over the 14 days before it.
    #: Null: 0.75 per user.
    initial_listings: int | None = Field(None, ge=0)
    #: Share of users who joined before `start`; the others join uniformly over the period.
    initial_user_share: float = Field(0.5, ge=0, le=1)
    #: Standard deviation of the weekly random walk of users' category log-preferences.
    taste_drift: float = Field(0.3, ge=0)
    #: Time constant (days) of the freshness decay of a listing's visibility.
    freshness_days: float = Field(4.0, gt=0)
    #: Share of sessions that browse the feed with only a weak pull of the user's taste.
    browse_share: float = Field(0.2, ge=0, le=1)
    #: Listings of one category the feed surfaces to a slot's sessions (drawn by freshness,
    #: popularity and appeal when more are live); sessions choose among these. Bounds a
    #: session's cost whatever the catalogue size, so generation grows with the events.
    feed_depth: int = Field(1_000, ge=10)


class MovieLens100kSourceConfig(StrictModel):
    """The MovieLens-100K folder (u.data, u.item, u.user)."""

    kind: Literal["movielens_100k"] = "movielens_100k"
    path: Path


class ColumnMapping(StrictModel):
    """Source column name for each canonical column; missing optional columns become null."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    ts: str = "ts"
    event: str | None = None
    weight: str | None = None
    #: "auto" detects epoch seconds / milliseconds / ISO-8601 strings.
    ts_unit: Literal["auto", "s", "ms", "iso"] = "auto"
    default_event: str = "interaction"


class InteractionsFileSourceConfig(StrictModel):
    """Generic CSV or Parquet interactions, with optional items and users files."""

    kind: Literal["interactions_file"] = "interactions_file"
    interactions: Path
    items: Path | None = None
    users: Path | None = None
    columns: ColumnMapping = ColumnMapping()
    item_columns: dict[str, str] = Field(
        default_factory=dict, description="canonical item column -> source column"
    )
    user_columns: dict[str, str] = Field(
        default_factory=dict, description="canonical user column -> source column"
    )


class FixedSplitSourceConfig(StrictModel):
    """Fixed benchmark split: train/valid/test files of `user_id item_id item_id ...` lines."""

    kind: Literal["fixed_split"] = "fixed_split"
    path: Path
    train_file: str = "train.txt"
    valid_file: str | None = "valid.txt"
    test_file: str = "test.txt"


SourceConfig = Annotated[
    SyntheticSourceConfig
    | MovieLens100kSourceConfig
    | InteractionsFileSourceConfig
    | FixedSplitSourceConfig,
    Field(discriminator="kind"),
]


class ValidationConfig(StrictModel):
    """Bad rows are quarantined; above `max_bad_share` of any table the run fails.

    A timestamp after the ingestion time plus `future_tolerance`, or before `min_timestamp`,
    is a bad row: a date in the future or near epoch 0 is an export bug, not an event.
    """

    max_bad_share: float = Field(0.05, ge=0, le=1)
    #: How many offending rows an error message shows.
    examples_in_error: int = Field(5, ge=1, le=50)
    #: Earliest plausible timestamp (UTC) in any table: catches epoch-0 placeholders and
    #: epoch seconds read as milliseconds (MovieLens-100K starts in 1997). Null: no floor.
    min_timestamp: CalendarDate | None = "1990-01-01"
    #: How far after the ingestion time a timestamp may lie: clock skew, or local times
    #: read as UTC (at most 14h). Null: no bound.
    future_tolerance: Duration | None = "1D"
    #: Interaction rows equal in every column to an earlier row (a double export, a retried
    #: write): `drop` keeps the first (counted in the report, not a bad row), `quarantine`
    #: sets the copies apart as bad rows (they count towards `max_bad_share`), `keep` counts
    #: them and trains on them (when repeats are real events).
    duplicate_events: Literal["drop", "quarantine", "keep"] = "drop"


class SplitConfig(StrictModel):
    """Temporal global cut-offs (train < valid < test) by duration or by share of the time span.

    `protocol: fixed` passes through a split given by the source.
    """

    protocol: Literal["temporal", "fixed"] = "temporal"
    valid_duration: Duration | None = "7D"
    test_duration: Duration | None = "7D"
    valid_fraction: float | None = Field(None, gt=0, lt=1)
    test_fraction: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_way_to_cut(self) -> SplitConfig:
        if self.protocol == "fixed":
            return self
        by_fraction = self.valid_fraction is not None or self.test_fraction is not None
        if by_fraction and (self.valid_fraction is None or self.test_fraction is None):
            raise ValueError("split: give both valid_fraction and test_fraction, or neither")
        if by_fraction and self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("split: valid_fraction + test_fraction must be below 1")
        if not by_fraction and (self.valid_duration is None or self.test_duration is None):
            raise ValueError(
                "split: give valid_duration and test_duration (e.g. '7D'), "
                "or valid_fraction and test_fraction"
            )
        return self

    @property
    def by_fraction(self) -> bool:
        return self.valid_fraction is not None


class PopularityConfig(StrictModel):
    """Recent-popularity recommender: event-weighted counts over a trailing window."""

    window: Duration = "14D"
    #: Half-life of the exponential time decay inside the window; null disables decay.
    half_life: Duration | None = "3D"
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "view": 1.0,
            "like": 2.0,
            "save": 3.0,
            "add_to_bag": 4.0,
            "purchase": 5.0,
            "rating": 1.0,
            "interaction": 1.0,
        }
    )


class TwoTowerConfig(StrictModel):
    """Content-aware two-tower encoder (components.retrieval.two_tower)."""

    seed: int = 0
    embedding_dim: int = Field(64, ge=4)
    #: Width of each attribute / bucket / text embedding feeding the item tower's MLP.
    feature_dim: int = Field(16, ge=2)
    #: Hidden width of the item tower's and the user tower's MLPs.
    hidden_dim: int = Field(128, ge=4)
    #: Hashed word / character n-gram buckets of the title EmbeddingBag.
    text_buckets: int = Field(2**16, ge=16)
    price_buckets: int = Field(16, ge=2)
    age_buckets: int = Field(12, ge=2)
    #: Item-id embedding, dropped out in training so the content path stands on its own.
    use_item_id: bool = True
    item_id_dropout: float = Field(0.5, ge=0, le=1)
    #: Id tables with more rows than this train with sparse gradients and lazy Adam (only
    #: the rows a batch touched move): dense Adam passes over every row at every step, so
    #: on a large catalogue an epoch costs steps x listings; below the threshold dense
    #: steps are the faster (figures: docs/models.md), and the public benchmarks and the
    #: demo stay dense.
    sparse_id_rows: int = Field(65_536, ge=1)
    #: User tower: how many recent interactions are pooled (without timestamps: how many
    #: of the user's items, sampled afresh for each training example).
    history_length: int = Field(50, ge=1)
    #: Add a user-id embedding to the pooled history (unknown users: history alone).
    use_user_id: bool = False
    temperature: float = Field(0.07, gt=0)
    logq_correction: bool = True
    #: Negatives drawn uniformly among the listings live at the batch's time, beside the
    #: in-batch ones: they teach freshness (live stock is mostly older than what people
    #: click). Fixed splits without timestamps gain nothing from them (all items are live).
    extra_negatives: int = Field(1024, ge=0)
    batch_size: int = Field(1024, ge=8)
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_epochs: int = Field(20, ge=1)
    patience: int = Field(3, ge=1)
    #: Early stopping watches recall@K on the valid window, exact search.
    early_stopping_k: int = Field(20, ge=1)
    #: ... over at most this many of the window's users (a seeded sample): each check
    #: ranks the whole catalogue per user (Gowalla, 30k users x 41k items: ~10 s a check).
    early_stopping_users: int = Field(10_000, ge=10)
    #: A safety net, far above a normal fit: epochs and early stopping decide training, so
    #: the same snapshot and config give the same model on a busy machine. Reaching it
    #: stops the fit (the report warns: the model then depends on the machine's speed).
    max_training_seconds: float = Field(6 * 3600, gt=0)
    #: Processes that train the encoder data-parallel (torch.distributed, gloo on CPU):
    #: each trains on its part of every batch with `cpus // processes` torch threads and
    #: the step uses their averaged gradients (same batches, same steps as one process).
    #: 1: one process (the default). REWEAR_ENCODER_PROCESSES overrides it.
    processes: int = Field(1, ge=1)
    #: Temporal splits, stage "test": after choosing the epoch count on the valid window,
    #: retrain from scratch on the test-stage history (train + valid) for that many epochs.
    #: False: serve the model fitted on the train window (half the training time).
    refit_on_test_history: bool = True
    #: The refit continues the early-stopped model (its weights and Adam moments; new
    #: listings, sellers, brands get rows of their own) for one pass over the valid
    #: window's targets, with the train window as their history: the served model has
    #: seen every week, in a fraction of a from-scratch refit's time (more passes over
    #: one week overfit it). False: retrain from scratch on train + valid.
    refit_warm_start: bool = True
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "view": 0.5,
            "like": 1.0,
            "save": 1.0,
            "add_to_bag": 1.5,
            "purchase": 2.0,
            "rating": 1.0,
            "interaction": 1.0,
        }
    )
    #: Recency half-life of the history pooling weights (null: no decay).
    recency_half_life: Duration | None = "7D"
    #: Timestamped data: each batch is drawn from one window of this length (shuffled, with
    #: boundaries moved at random every epoch), so in-batch negatives are listings live at
    #: about the same time and log-Q uses their popularity then. Null: the whole history.
    batch_window: Duration | None = "1D"
    #: Timestamped data: targets are shuffled in runs of up to this many consecutive
    #: targets of one user, so a batch embeds the listings of their shared history once (1:
    #: each target on its own; fixed splits always are). 4 trains the 20k-user synthetic
    #: marketplace 1.6x faster, at the same valid recall within seed noise (synthetic 4k
    #: and 20k users, MovieLens-100K); a user's other targets in a batch are not negatives.
    user_run: int = Field(4, ge=1)


class AnnoyConfig(StrictModel):
    """Annoy index over normalised item vectors (angular metric).

    Defaults tuned for recall@100 >= 0.95 against exact search on 64-dim vectors, 3k to 30k
    items (components.retrieval.ann_index; figures in its module docstring).
    """

    n_trees: int = Field(50, ge=1)
    #: Nodes inspected per query; -1: search_k_factor * n_trees * k.
    search_k: int = Field(-1, ge=-1)
    #: Annoy's own default is 1, which misses many true neighbours on clustered vectors; 4
    #: finds nearly all (docs/models.md, "Measurements behind the defaults").
    search_k_factor: float = Field(4.0, gt=0)
    #: Inner-product search on vectors that are not normalised (e.g. iALS factors): items get
    #: an extra coordinate sqrt(max_norm^2 - |x|^2), queries a 0 (Annoy 1.17.3's own `dot`
    #: metric has poor recall). False for the two-tower's normalised vectors. Items with
    #: widely spread norms need a much larger search_k (ann_index module docstring).
    inner_product: bool = False
    seed: int = 0
    #: Annoy seeds each build thread with seed + thread number, so the trees depend on the
    #: thread count: keep it fixed for reproducible builds.
    build_threads: int = Field(1, ge=1)
    #: Users sampled to measure ANN recall@K against exact search at every build.
    recall_sample: int = Field(500, ge=10)
    recall_k: int = Field(100, ge=1)


class CovisitationConfig(StrictModel):
    """Item-to-item co-visitation: items that share a user session, recently."""

    #: Interactions of one user closer than this in time belong to one session.
    session_gap: Duration = "30min"
    #: Only sessions inside this trailing window count (null: all of the history).
    window: Duration | None = "28D"
    #: How many of the user's most recent items seed their recommendations.
    recent_items: int = Field(20, ge=1)
    event_weights: dict[str, float] = Field(default_factory=dict)


class EaseConfig(StrictModel):
    """EASE (Steck 2019): closed-form linear item-item model; needs items^2 memory."""

    l2: float = Field(500.0, gt=0)
    #: Above this many items the catalogue does not fit in memory: iALS is used instead.
    max_items: int = Field(20_000, ge=10)


class IalsConfig(StrictModel):
    """Implicit ALS (Hu, Koren, Volinsky 2008) via the `implicit` package."""

    factors: int = Field(64, ge=1)
    iterations: int = Field(15, ge=1)
    regularization: float = Field(0.05, ge=0)
    alpha: float = Field(10.0, gt=0)
    seed: int = 0


class GraphFilterConfig(StrictModel):
    """GF-CF (Shen et al. 2021): normalised item-item graph plus an ideal low-pass filter
    (components.retrieval.graph_filter); training-free, for catalogues above EASE's size."""

    #: Singular vectors of the ideal low-pass filter (the published Gowalla setting: 256).
    factors: int = Field(256, ge=0)
    #: Weight of the ideal low-pass filter beside the linear one (published: 0.3).
    alpha: float = Field(0.3, ge=0)
    seed: int = 0


class Rp3BetaConfig(StrictModel):
    """RP3beta (Paudel et al. 2016): the item -> user -> item walk, popular targets
    discounted (components.retrieval.rp3beta); training-free, sparse."""

    #: Exponent of the walk's transition probabilities (1: the plain random walk); .7 was
    #: best on the Gowalla tune split (docs/models.md).
    alpha: float = Field(0.7, ge=0)
    #: Popularity discount of the target item, p_j ** -beta (0: none).
    beta: float = Field(0.4, ge=0)
    #: Links kept per item (null: all). Pruning costs recall (docs/models.md): set it only
    #: where the full graph does not fit in memory.
    neighbours: int | None = Field(None, ge=1)


#: The candidate models a retrieval stack can merge, by name (`model.candidates.sources`).
SourceName = Literal[
    "two_tower",
    "covisitation",
    "popularity",
    "category_popularity",
    "linear",
    "factors",
    "graph_filter",
    "rp3beta",
]


class CandidatesConfig(StrictModel):
    """The retrieval stage: which candidate models run, their settings, and the merge.

    Each source named in `sources` is fitted from its own settings below (the baselines in
    `evaluation.baselines` are yardsticks with settings of their own, never a source).
    """

    #: Candidates kept per source and per user.
    per_source: int = Field(200, ge=1)
    #: Users whose candidates (and label-stage features) are built at a time: bounds the
    #: memory of the candidate and feature stages whatever the number of users.
    chunk_users: int = Field(2048, ge=1)
    #: Size of the merged set per user (the ranker's input); candidate recall is at this N.
    n: int = Field(200, ge=1)
    #: The candidate models, merged by reciprocal-rank fusion:
    #: - two_tower: the content-aware two-tower encoder (`model.two_tower`) through the
    #:   Annoy index (`model.annoy`); its similarities are also ranking features;
    #: - covisitation: items sharing recent sessions with the user's (`covisitation`);
    #: - popularity: popular listings in a recent window (`popularity`);
    #: - category_popularity: popular listings in the user's top categories;
    #: - linear: EASE when the catalogue fits `ease.max_items`, iALS (`ials`) otherwise;
    #: - factors: iALS beside an EASE `linear` (another model family for the ranker; left
    #:   out when `linear` is iALS already);
    #: - graph_filter: GF-CF (`graph_filter`), training-free, sparse: strong on large
    #:   catalogues where EASE does not fit;
    #: - rp3beta: RP3beta (`rp3beta`), the same sparse graph ranked by a random walk with
    #:   a popularity discount of its own.
    sources: tuple[SourceName, ...] = (
        "two_tower",
        "covisitation",
        "popularity",
        "category_popularity",
        "linear",
    )
    popularity: PopularityConfig = PopularityConfig(half_life=None, event_weights={})
    covisitation: CovisitationConfig = CovisitationConfig()
    ease: EaseConfig = EaseConfig()
    graph_filter: GraphFilterConfig = GraphFilterConfig()
    rp3beta: Rp3BetaConfig = Rp3BetaConfig()
    ials: IalsConfig = IalsConfig()
    #: How many of the user's top categories feed `category_popularity`.
    top_categories: int = Field(3, ge=1)
    #: The items column that `category_popularity` groups by.
    category_column: Literal["category", "subcategory", "brand"] = "category"
    #: Recency half-life of a user's category affinity (null: the whole history counts
    #: equally); tastes drift, so recent interactions weigh more.
    affinity_half_life: Duration | None = "14D"
    #: Reciprocal-rank fusion constant of the merge: score = sum_s 1 / (rrf_k + rank_s).
    rrf_k: int = Field(60, ge=1)
    #: Weight w_s of each source in the fusion, sum_s w_s / (rrf_k + rank_s); absent: 1.
    #: Tune on the valid window (docs/models.md has the figures behind the shipped ones).
    source_weights: dict[str, float] = Field(default_factory=dict)
    #: Items never returned to anyone (e.g. moderation blocks).
    blocked_item_ids: tuple[str, ...] = ()

    @field_validator("source_weights")
    @classmethod
    def _weights_name_sources(cls, weights: dict[str, float]) -> dict[str, float]:
        known = get_args(SourceName)
        unknown = sorted(set(weights) - set(known))
        if unknown:
            raise ValueError(
                f"source_weights names {unknown}, which are not candidate models; "
                f"use names from {list(known)}"
            )
        return weights


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

    @model_validator(mode="after")
    def _positive_ks(self) -> EvaluationConfig:
        if not self.ks or any(k <= 0 for k in self.ks):
            raise ValueError("evaluation.ks must be a non-empty list of positive integers")
        return self


class OffPolicyGateConfig(StrictModel):
    """Hold back, before any traffic, a challenger that the explored exposure log says is
    clearly worse: the upper end of the interval of its estimated sold listings per session
    relative to champion's lies below -`margin`. Acts only when the log has explored
    sessions with attributed sales in its last `lookback`; otherwise the check is recorded
    as skipped, with the reason."""

    enabled: bool = True
    margin: float = Field(0.10, ge=0, le=1)
    lookback: Duration = "14D"
    min_sessions: int = Field(2_000, ge=1)
    #: Share of the challenger's slots whose items lie inside champion's explored top m
    #: below which the check is skipped: the estimators count an unsupported slot as 0,
    #: so a challenger far from champion would look worse than it is.
    min_covered_slots: float = Field(0.95, ge=0, le=1)
    #: The estimator the check reads: `snpbm`, self-normalised position-based (a target's
    #: item counts wherever the explored list showed it), is the one accurate enough at the
    #: default exploration (docs/experiments.md, "Estimator accuracy").
    estimator: Literal["ips", "snips", "rips", "snrips", "dr", "pbm", "snpbm"] = "snpbm"


class PromotionConfig(StrictModel):
    """The gate that moves `champion` to a newly registered version (components.registry.
    promotion).

    The challenger's held-out model and the champion's served bundle are scored on the same
    users, on interactions neither has seen; the challenger passes when the lower end of
    the 95% paired-bootstrap interval of (challenger - champion) on `metric` is above
    `-margin` (non-inferiority). Guardrails: the version loads from the registry in a fresh
    process and answers smoke requests within `max_p99_latency_ms`, and its `coverage_metric`
    on the test window is at least `min_coverage`. Exposure guard (`exposure_guard`): the
    challenger is held back when its exposure is clearly more concentrated than champion's,
    by the same paired bootstrap over users: the lower end of the interval of challenger -
    champion seller-exposure Gini@20 above `max_seller_gini_increase`, or the upper end of
    the interval of its share of list slots on new listings@20 below
    `-max_new_listing_exposure_drop`.
    """

    metric: str = "ndcg@10"
    #: Absolute tolerance on `metric`: fresher models may be this much worse and still win.
    margin: float = Field(0.01, ge=0)
    #: Fewer evaluated users than this: the comparison is not trusted (champion stays).
    min_users: int = Field(20, ge=1)
    coverage_metric: str = "coverage@20"
    #: 0 disables the bound (a popularity model covers only ~k listings by design).
    min_coverage: float = Field(0.0, ge=0, le=1)
    #: p99 of single-user k=20 requests in the fresh process, after one warm-up pass (a
    #: busy CI machine, loose on purpose; bench/serving.py measures the served figure).
    max_p99_latency_ms: float = Field(250.0, gt=0)
    latency_requests: int = Field(50, ge=5)
    smoke_timeout_s: float = Field(300.0, gt=0)
    #: Hold back a challenger whose exposure is clearly more concentrated than champion's;
    #: false: the exposure figures are still compared and reported, not enforced.
    exposure_guard: bool = True
    #: Tolerated rise of the seller-exposure Gini@20 (0 = equal exposure, 1 = one seller).
    #: Popularity-like models show everyone nearly the same list, so their interval is a
    #: point and which sellers own this week's top items moves it: 0.05 keeps ordinary
    #: refreshes through and stops a model that favours a few sellers (docs/models.md).
    max_seller_gini_increase: float = Field(0.05, ge=0, le=1)
    #: Tolerated fall of the share of list slots (top 20) that go to new listings.
    max_new_listing_exposure_drop: float = Field(0.05, ge=0, le=1)
    #: Online promotion: the offline gate above only sets `challenger` (a first version,
    #: with no champion to test against, still becomes champion through it), and
    #: `champion` moves when an online experiment's readout passes (`experiment`).
    online: bool = False
    #: Off-policy check before any traffic (components.pipeline.off_policy).
    off_policy: OffPolicyGateConfig = OffPolicyGateConfig()


class RegistryConfig(StrictModel):
    model_name: Name = "rewear"
    experiment: str = Field("rewear", min_length=1, pattern=r"^\S(.*\S)?$")
    promotion: PromotionConfig = PromotionConfig()


class MarketSimulationConfig(StrictModel):
    """How the synthetic market answers served lists (components.data.market_simulation):
    the users' examination of a list and their clicks; past a click, the generator's own
    escalation to like, save, bag and purchase."""

    #: Days simulated after the generated period.
    days: int = Field(14, ge=1, le=120)
    #: Share of sessions that open on the recommendations (the rest browse organically).
    recommended_share: float = Field(0.5, ge=0, le=1)
    #: Listings asked for per recommendation session.
    k: int = Field(20, ge=1, le=100)
    #: `position_based`: slot r is examined with probability r ** -examination_decay,
    #: independently; `cascade`: slots are examined top-down, going on past each with
    #: probability `cascade_continue`, and a purchase ends the session's list.
    position_model: Literal["position_based", "cascade"] = "position_based"
    examination_decay: float = Field(0.7, gt=0)
    cascade_continue: float = Field(0.85, gt=0, le=1)
    #: Click (view) logit of an examined slot: intercept + slope x (affinity - the
    #: generator's affinity centre).
    click_intercept: float = Field(-1.2, ge=-10, le=5)
    click_slope: float = Field(0.7, ge=0)
    seed: int = 0


class ExplorationConfig(StrictModel):
    """Randomised serving for off-policy evaluation (components.experiments.exploration):
    each list a Plackett-Luce draw from the arm's top `top_m`, weight rank ** (-1 /
    temperature), logged with its propensities. 0: the deterministic list."""

    top_m: int = Field(50, ge=1, le=500)
    #: The default keeps the expected cost of exploring under the 2% budget on the
    #: synthetic market (docs/experiments.md, off-policy evaluation).
    temperature: float = Field(0.3, ge=0, le=10)


#: Outcomes a readout can take as the primary metric, per assigned unit.
OnlineMetric = Literal["purchases", "views", "saves", "revenue"]


class ExperimentConfig(StrictModel):
    """An online experiment of `challenger` against `champion` (components.experiments,
    flows.experiment): how units are split, what is read out, and when it may decide."""

    #: `ab`: each unit sees its arm's list; `interleave`: team-draft interleaving of both
    #: arms' lists, each slot credited to the arm that drafted it; `explore`: every unit
    #: sees champion's list with `exploration` (a logging period for off-policy evaluation).
    design: Literal["ab", "interleave", "explore"] = "ab"
    treatment_share: float = Field(0.5, gt=0, lt=1)
    #: Hash salt; null: the experiment's id (a new experiment reshuffles everyone).
    salt: str | None = Field(None, min_length=1)
    #: The decision's metric: attributed outcomes per assigned unit (`purchases`: sold
    #: listings per assigned user).
    primary_metric: OnlineMetric = "purchases"
    #: What a team is credited with under interleaving: its slots' attributed outcomes of
    #: this kind (clicks, i.e. views, by default: many more of them than purchases).
    interleaving_credit: OnlineMetric = "views"
    #: Non-inferiority margin, relative to control: the lower bound of (treatment -
    #: control) / control on the primary metric must lie above -margin.
    margin: float = Field(0.02, ge=0, le=1)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    #: The always-valid confidence sequence is tightest around this many units.
    sequential_tuning_units: int = Field(5_000, ge=10)
    #: Sample-ratio mismatch alarm (chi-square p-value below it: the readout refuses).
    srm_alpha: float = Field(0.001, gt=0, lt=1)
    #: CUPED on each unit's pre-period behaviour (its views, likes, saves, bags and
    #: purchases in the `pre_period` before the start).
    cuped: bool = True
    pre_period: Duration = "28D"
    min_days: int = Field(7, ge=1)
    max_days: int = Field(28, ge=1)
    min_units: int = Field(1_000, ge=1)
    #: Outcome -> the longest gap after an exposure for it to count as the exposure's.
    attribution_windows: dict[str, Duration] = {
        "view": "1h",
        "like": "1D",
        "save": "1D",
        "add_to_bag": "1D",
        "purchase": "7D",
    }
    #: Where served slots are logged: a folder or pyarrow filesystem URI (a day-partitioned
    #: Parquet dataset) or a postgresql:// URL; null: REWEAR_HOME/exposures.
    exposure_log: str | None = None
    #: Unit bootstrap resamples of the exposure guardrails' intervals.
    bootstrap_resamples: int = Field(200, ge=20)
    simulation: MarketSimulationConfig = MarketSimulationConfig()
    #: Plackett-Luce exploration of the lists served in `ab` and `explore` experiments.
    exploration: ExplorationConfig = ExplorationConfig()

    @model_validator(mode="after")
    def _days_are_ordered(self) -> ExperimentConfig:
        if self.max_days < self.min_days:
            raise ValueError(
                f"experiment.max_days ({self.max_days}) is below experiment.min_days "
                f"({self.min_days}); raise max_days or lower min_days"
            )
        return self


class ExecutionConfig(StrictModel):
    """How the per-user stages (candidates, label-stage features, evaluation) are cut: into
    shards of at most `shard_users` users, each a task of its own (mapped over the Dask
    workers with REWEAR_TASK_RUNNER=dask, one after the other otherwise) writing its own
    parquet part; the parts' partial results are combined exactly. Inside a shard,
    `model.candidates.chunk_users` still bounds the memory of a step."""

    #: Users per shard (rounded down to whole chunks of `model.candidates.chunk_users`, and
    #: of the evaluation's scoring batches, when larger than one: the same batches, so the
    #: same figures, as one process): the 4k-user demo's windows are one shard each, a
    #: window of 100k users seven.
    shard_users: int = Field(16_384, ge=1)


class PipelineConfig(StrictModel):
    """Everything one `retrain` run needs."""

    name: Name
    source: SourceConfig
    validation: ValidationConfig = ValidationConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig = RegistryConfig()
    execution: ExecutionConfig = ExecutionConfig()
    experiment: ExperimentConfig = ExperimentConfig()

    @model_validator(mode="after")
    def _promotion_metrics_are_evaluated(self) -> PipelineConfig:
        """The gate's metrics must be ones the evaluation produces at `evaluation.ks`."""
        ks = set(self.evaluation.ks)
        promotion = self.registry.promotion
        compared = [metric for metric in COMPARED_METRICS if metric_k(metric) in ks]
        if promotion.metric not in compared:
            raise ValueError(
                f"registry.promotion.metric {promotion.metric!r} is not a metric the champion "
                f"comparison produces at evaluation.ks {sorted(ks)}; use one of {compared}"
            )
        names = [*ACCURACY_METRICS, *FAIRNESS_METRICS]
        if promotion.coverage_metric not in [f"{name}@{k}" for name in names for k in ks]:
            raise ValueError(
                f"registry.promotion.coverage_metric {promotion.coverage_metric!r} is not a "
                f"metric the evaluation produces; use <name>@<k> with a name from {names} "
                f"and k from evaluation.ks {sorted(ks)} (e.g. 'coverage@{max(ks)}')"
            )
        missing = sorted({metric_k(metric) for metric in COMPARED_EXPOSURE} - ks)
        if promotion.exposure_guard and missing:
            raise ValueError(
                f"registry.promotion.exposure_guard compares exposure at k={missing}: add it "
                "to evaluation.ks or set registry.promotion.exposure_guard: false"
            )
        return self


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


class ConfigError(ValueError):
    """A config file is missing, unreadable or invalid; the message says which and how."""


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a pipeline YAML, apply dotted overrides (`{"source.n_users": 500}`), validate.

    Relative paths inside the file are resolved against the file's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass one of configs/*.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    _resolve_relative_paths(raw, path.parent)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"config file {path} is invalid:\n{describe_errors(error)}") from error


def describe_errors(error: ValidationError) -> str:
    """One line per invalid value: the dotted key, the rule, and what was given."""
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        given = problem.get("input")
        if problem["type"] != "value_error" and not isinstance(given, dict | list):
            message += f" (got {given!r})"
        where = ".".join(str(part) for part in problem["loc"])
        lines.append(f"  {where}: {message}" if where else f"  {message}")
    return "\n".join(lines)


def config_hash(config: PipelineConfig) -> str:
    """Stable short hash of the resolved config (recorded on runs and model versions)."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = value


def _resolve_relative_paths(raw: dict[str, Any], base: Path) -> None:
    source = raw.get("source")
    if not isinstance(source, dict):
        return
    for key in ("path", "interactions", "items", "users"):
        value = source.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            source[key] = str((base / value).resolve())
