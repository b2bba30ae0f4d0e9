"""The retrieval layer's settings: each candidate source (popularity, two-tower and its
Annoy index, co-visitation, EASE, iALS, GF-CF, RP3beta) and how their lists merge
(`model.candidates`).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import (
    Field,
    field_validator,
)

from components.config.base import Duration, StrictModel


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
    #: each target on its own; fixed splits always are): faster for the same valid recall
    #: (docs/models.md, "Measurements behind the defaults"); a user's other targets in a
    #: batch are not negatives.
    user_run: int = Field(4, ge=1)


class AnnoyConfig(StrictModel):
    """Annoy index over normalised item vectors (angular metric).

    Defaults tuned for the recall of exact search on 64-dim vectors (docs/models.md,
    "Measurements behind the defaults").
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
