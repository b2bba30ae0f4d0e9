"""The served recommender: `BundleRecommender` loads a bundle folder and answers "top-K
available items for this user". The MLflow pyfunc wraps the same class, so offline checks,
the CLI and the HTTP server all run one implementation.

A request row names a known user (`user_id`), an anonymous or session user (the
`recent_item_ids` they just viewed), or both. `recommend` answers each row by one of four
paths, in this order:

1. the two-stage ranker, for known users without a session (`_rank_two_stage`);
2. popular listings in the session's categories first, for a session without a two-tower
   encoder (`_rank_in_context`);
3. the two-tower encoder's nearest listings in the Annoy index (`_rank_one` with a vector);
4. popular available listings (`_rank_one` without one), which also fill what a path above
   leaves short.

Sold, unavailable, already bought, session and explicitly excluded items are never
returned. The bundle's file format is `components.serving.bundle`; request parsing and
limits are `components.serving.request_parsing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.ids import IdPositions
from components.retrieval.popularity import RecentPopularity
from components.serving.bundle import (
    MANIFEST,
    POPULARITY_SOURCE,
    TWO_TOWER_SOURCE,
    verify_bundle,
)
from components.serving.loaded_parts import ServedRetrieval, load_retrieval, load_two_stage
from components.serving.ranked_lists import RANKED_LISTS_DIR, RankedLists
from components.serving.request_parsing import (
    MAX_ANSWER_ROWS,
    MAX_EXCLUDED_ITEMS,
    RecommendationRequest,
    RequestError,
    parse_requests,
    validate_item_ids,
    validate_k,
)
from components.store import read_json

#: Answer `source`s besides the model kinds (POPULARITY_SOURCE, TWO_TOWER_SOURCE, from the
#: bundle's format). This one: popular listings filling in for the two-tower or the ranker.
FALLBACK_SOURCE = "popularity_fallback"
#: Anonymous sessions without an encoder: popular listings in the session's categories.
SESSION_POPULARITY_SOURCE = "session_popularity"
#: The synthetic user id an anonymous session is encoded under (never a real id: NUL).
SESSION_USER = "\x00session"
SESSION_EVENT = "view"
ITEM_DISPLAY_COLUMNS = ("title", "category", "price")
#: `request` is the 0-based row of the request each answer belongs to (anonymous rows
#: have no user_id to match on).
OUTPUT_COLUMNS = (
    "user_id",
    "rank",
    "item_id",
    "score",
    "source",
    *ITEM_DISPLAY_COLUMNS,
    "request",
)


def request_runs(request: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each request's rows start and end ([start, end)) in an answer sorted by its
    `request` column."""
    if not len(request):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, request[1:] != request[:-1]])
    return starts, np.r_[starts[1:], len(request)]


#: Extra neighbours asked of the index beyond k and the user's masked items.
ANN_MARGIN = 20


@dataclass
class BundleRecommender:
    """Answers top-K requests from a bundle folder; sold/unavailable items are never returned."""

    model: RecentPopularity
    item_ids: np.ndarray
    item_details: pd.DataFrame
    catalogue: pd.DataFrame
    available: np.ndarray
    exclusions: dict[str, np.ndarray]
    metadata: dict[str, object]
    retrieval: ServedRetrieval | None = None
    #: The two-stage model (components.ranking.model.TwoStageModel) when the bundle has one.
    two_stage: Any = None
    #: Most answer rows (request rows x k) one `recommend` call may ask for.
    max_answer_rows: int = MAX_ANSWER_ROWS
    #: Known users' two-stage answers computed when the bundle was written (None: every
    #: request is ranked live); `components.serving.ranked_lists`.
    ranked_lists: RankedLists | None = None
    #: Request-side lookups built once at load: catalogue position of each item id,
    #: popularity per catalogue row, category code per row (-1: none).
    item_rows: IdPositions = field(init=False, repr=False)
    popularity: np.ndarray = field(init=False, repr=False)
    category_codes: np.ndarray = field(init=False, repr=False)
    display_columns: dict[str, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.item_rows = IdPositions(self.item_ids)
        self.popularity = self.model.item_scores(self.item_ids).astype(np.float64)
        # Missing values: None for text (JSON null), NaN for the price.
        self.display_columns = {
            name: column.astype(object).where(column.notna(), None).to_numpy()
            for name, column in self.item_details.items()
        }
        self.display_columns["price"] = self.item_details["price"].to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        if self.retrieval is not None:
            index = self.retrieval.index
            every = np.arange(index.count)
            self.retrieval.index_rows = self.item_rows.positions(index.ids_at(every))
        categories = self.catalogue.get("category")
        if categories is None:
            self.category_codes = np.full(len(self.item_ids), -1, dtype=np.int64)
        else:
            self.category_codes = pd.factorize(categories.astype("object"))[0]

    @classmethod
    def load(cls, folder: Path, *, checked: bool = True) -> BundleRecommender:
        """Verify every file against the manifest (`BundleError` naming the first bad one),
        then read them, all in native formats (parquet, JSON, npy/npz without pickles,
        torch weights only, Annoy, LightGBM text). `checked=False` is for the writer of a
        bundle not sealed yet (it adds the ranked lists computed from the rest)."""
        folder = Path(folder)
        manifest = verify_bundle(folder) if checked else read_json(folder / MANIFEST)
        metadata = {k: v for k, v in manifest.items() if k != "files"}
        catalogue = pd.read_parquet(folder / "items.parquet")
        item_ids = catalogue["item_id"].astype(str).to_numpy(dtype=object)
        exclusions_table = pd.read_parquet(folder / "user_exclusions.parquet")
        item_position = pd.Index(item_ids)
        exclusions = {
            str(user): np.unique(item_position.get_indexer(group.astype(str)))
            for user, group in exclusions_table.groupby("user_id")["item_id"]
        }
        retrieval = None
        if metadata.get("model_kind") == TWO_TOWER_SOURCE:
            retrieval = load_retrieval(folder, catalogue, metadata)
        return cls(
            model=RecentPopularity.load(folder / "model"),
            item_ids=item_ids,
            item_details=catalogue[list(ITEM_DISPLAY_COLUMNS)].reset_index(drop=True),
            catalogue=catalogue,
            available=catalogue["available"].to_numpy(bool),
            exclusions=exclusions,
            metadata=metadata,
            retrieval=retrieval,
            two_stage=load_two_stage(folder),
            ranked_lists=RankedLists.load(folder / RANKED_LISTS_DIR)
            if checked and (folder / RANKED_LISTS_DIR).is_dir()
            else None,
        )

    @property
    def trained_until(self) -> pd.Timestamp | None:
        """The model saw interactions strictly before this time (None: no timestamps).

        For the two-tower kind the user tower reads the bundled histories, which run to
        the end of the snapshot, so that is what counts; a two-stage model saw the history
        before its retrieval stack's moment."""
        if self.two_stage is not None:
            return self.two_stage.stack.moment
        if self.retrieval is not None:
            until = self.metadata.get("data_until")
            return None if until is None else pd.Timestamp(str(until))
        return self.model.as_of

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """The `Scorer` protocol, so offline evaluation scores the served model itself;
        the evaluation protocol applies its own availability and history masks. Users
        without history get the popularity fallback, as in `recommend`."""
        if self.two_stage is not None:
            return self.two_stage.score(user_ids, item_ids)
        popularity = np.array(self.model.score(user_ids, item_ids), dtype=np.float32)
        if self.retrieval is None:
            return popularity
        retrieval = self.retrieval
        known = np.array([str(user) in retrieval.known_users for user in user_ids])
        scores = popularity.copy()
        if known.any():
            users = retrieval.encoder.encode(
                [str(u) for u, k in zip(user_ids, known, strict=True) if k]
            )
            scores[known] = users @ self._item_vectors(item_ids).T
        return scores

    def recommend(
        self,
        user_ids: Sequence[object] | None,
        k: object = 20,
        exclude_item_ids: object = (),
        recent_item_ids: Sequence[object] | None = None,
    ) -> pd.DataFrame:
        """Ranked rows (user_id, rank, item_id, score, source, title, category, price,
        request) for each request row.

        Row i asks for `user_ids[i]` (None: anonymous) with the session `recent_item_ids[i]`
        (None or empty: none). `exclude_item_ids` are never returned to any row. Raises
        `RequestError` naming the field and the fix when the request is malformed.
        """
        return pd.DataFrame(self.recommend_columns(user_ids, k, exclude_item_ids, recent_item_ids))

    def recommend_columns(
        self,
        user_ids: Sequence[object] | None,
        k: object = 20,
        exclude_item_ids: object = (),
        recent_item_ids: Sequence[object] | None = None,
    ) -> dict[str, Any]:
        """`recommend`'s answer as columns (OUTPUT_COLUMNS, arrays and lists): what the
        scoring server's direct JSON answer is written from, without a DataFrame."""
        k = validate_k(k)
        requests = parse_requests(user_ids, recent_item_ids)
        if len(requests) * k > self.max_answer_rows:
            raise RequestError(
                f"the request asks for {len(requests)} rows x k={k} = {len(requests) * k:,} "
                f"answers; at most {self.max_answer_rows:,} per call (REWEAR_MAX_ANSWER_ROWS): "
                "send fewer rows per call or a smaller k"
            )
        excluded = validate_item_ids(exclude_item_ids, "exclude_item_ids", MAX_EXCLUDED_ITEMS)
        blocked = ~self.available
        rows = self.item_rows.positions(list(excluded))
        blocked[rows[rows >= 0]] = True
        vectors = self._request_vectors(requests)
        answers = []
        for row, request in enumerate(requests):
            user_blocked = self._user_blocked(request.user_id, blocked)
            session = self._session_rows(request)
            user_blocked[session] = True
            vector = vectors.get(row)
            if self._ranks_two_stage(request):
                order, scores, sources = self._rank_two_stage(request.user_id, k, user_blocked)
            elif vector is None and len(session):
                order, scores, sources = self._rank_in_context(session, k, user_blocked)
            else:
                order, scores, sources = self._rank_one(vector, k, user_blocked, self.popularity)
            answers.append((request.user_id, order, scores, sources))
        return self._answer_columns(answers)

    def _answer_columns(
        self, answers: list[tuple[str | None, np.ndarray, np.ndarray, list[str]]]
    ) -> dict[str, Any]:
        """All rows' answers as columns, built once from arrays (a frame per row costs
        milliseconds per request)."""
        lengths = [len(order) for _, order, _, _ in answers]
        order = np.concatenate([order for _, order, _, _ in answers]).astype(np.int64)
        columns: dict[str, object] = {
            "user_id": np.repeat(np.array([user for user, *_ in answers], dtype=object), lengths),
            "rank": np.concatenate([np.arange(1, n + 1) for n in lengths]),
            "item_id": self.item_ids[order],
            "score": np.concatenate([np.asarray(s, dtype=np.float64) for _, _, s, _ in answers]),
            "source": [source for *_, sources in answers for source in sources],
        }
        for name in ITEM_DISPLAY_COLUMNS:
            columns[name] = self.display_columns[name][order]
        columns["request"] = np.repeat(np.arange(len(answers)), lengths)
        return columns

    # -- path 1: the two-stage ranker, for known users without a session

    def _ranks_two_stage(self, request: RecommendationRequest) -> bool:
        """The ranker answers known users without a session (sessions and unknown users
        take the retrieval paths below)."""
        return (
            self.two_stage is not None
            and request.user_id is not None
            and not request.recent_item_ids
            and request.user_id in self.two_stage.features.users.index
        )

    def _user_blocked(self, user_id: str | None, blocked: np.ndarray) -> np.ndarray:
        """`blocked` (a copy) with what the user must not get again (their masked items)."""
        user_blocked = blocked.copy()
        masked = None if user_id is None else self.exclusions.get(user_id)
        if masked is not None:
            user_blocked[masked[masked >= 0]] = True
        return user_blocked

    def _rank_two_stage(
        self, user_id: str, k: int, blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The ranker's order of the user's candidates, popularity filling what is left:
        from the bundle's ranked lists when they can say, ranked live otherwise."""
        if self.ranked_lists is not None:
            stored = self.ranked_lists.answer(user_id, k, blocked)
            if stored is not None:
                return stored
        ranked = self.two_stage.ranked([user_id])
        return self._ranked_answer(ranked.item_ids, ranked.scores, ranked.sources, k, blocked)

    def two_stage_answers(
        self, user_ids: Sequence[str], k: int
    ) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
        """`_rank_two_stage` for many users without request exclusions, ranked in one
        `TwoStageModel.ranked` call (what the bundle's ranked lists are computed with)."""
        ranked = self.two_stage.ranked(user_ids)
        starts, ends = request_runs(IdPositions(user_ids).positions(ranked.user_ids))
        runs = {
            str(ranked.user_ids[start]): slice(start, end)
            for start, end in zip(starts, ends, strict=True)
        }
        unavailable = ~self.available
        answers = {}
        for user in user_ids:
            own = runs.get(user, slice(0, 0))
            answers[user] = self._ranked_answer(
                ranked.item_ids[own],
                ranked.scores[own],
                ranked.sources[own],
                k,
                self._user_blocked(user, unavailable),
            )
        return answers

    def _ranked_answer(
        self,
        item_ids: np.ndarray,
        ranked_scores: np.ndarray,
        ranked_sources: np.ndarray,
        k: int,
        blocked: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The first `k` ranked items not `blocked`; popularity fills a short answer."""
        rows = self.item_rows.positions(item_ids)
        usable = (rows >= 0) & ~blocked[np.maximum(rows, 0)]
        order = rows[usable][:k]
        scores = ranked_scores[usable][:k]
        sources = [str(source) for source in ranked_sources[usable][:k]]
        if len(order) < k:
            rest = blocked.copy()
            rest[order] = True
            fill, fill_scores, fill_sources = self._rank_one(
                None, k - len(order), rest, self.popularity
            )
            order = np.concatenate([order, fill])
            scores = np.concatenate([scores, fill_scores])
            sources += [FALLBACK_SOURCE] * len(fill_sources)
        return order, scores, sources

    # -- path 2: a session without an encoder, popular listings of its categories first

    def _session_rows(self, request: RecommendationRequest) -> np.ndarray:
        """Catalogue rows of the session's items (ids the bundle does not know are skipped:
        a session may hold listings newer than the bundle)."""
        if not request.recent_item_ids:
            return np.empty(0, dtype=np.int64)
        rows = self.item_rows.positions(list(request.recent_item_ids))
        return rows[rows >= 0]

    def _rank_in_context(
        self, session: np.ndarray, k: int, blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Popular listings in the session's categories first, then popular ones overall."""
        categories = np.unique(self.category_codes[session])
        in_context = np.isin(self.category_codes, categories[categories >= 0])
        lifted = self.popularity + in_context * (self.popularity.max(initial=0.0) + 1.0)
        order, _, sources = self._rank_one(None, k, blocked, lifted)
        sources = [
            SESSION_POPULARITY_SOURCE if in_context[row] else source
            for row, source in zip(order, sources, strict=True)
        ]
        return order, self.popularity[order], sources

    # -- paths 3 and 4: the two-tower's nearest listings, popularity filling the rest

    def _rank_one(
        self,
        user_vector: np.ndarray | None,
        k: int,
        blocked: np.ndarray,
        popularity: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        order = np.empty(0, dtype=np.int64)
        scores = np.empty(0)
        sources: list[str] = []
        if user_vector is not None and self.retrieval is not None:
            index = self.retrieval.index
            wanted = k + int(blocked.sum() - (~self.available).sum()) + ANN_MARGIN
            found = index.search(user_vector[None, :], min(wanted, index.count))
            positions = found.positions[0]
            keep = positions >= 0
            rows = self.retrieval.index_rows[positions[keep]]
            usable = (rows >= 0) & ~blocked[np.maximum(rows, 0)]
            order = rows[usable][:k]
            scores = found.scores[0][keep][usable][:k].astype(np.float64)
            sources = [TWO_TOWER_SOURCE] * len(order)
        if len(order) < k:
            fill = popularity.copy()
            fill[blocked] = -np.inf
            fill[order] = -np.inf
            ranked = np.lexsort((np.arange(len(fill)), -fill))[: k - len(order)]
            ranked = ranked[np.isfinite(fill[ranked])]
            source = POPULARITY_SOURCE if self.retrieval is None else FALLBACK_SOURCE
            order = np.concatenate([order, ranked])
            scores = np.concatenate([scores, fill[ranked]])
            sources += [source] * len(ranked)
        return order, scores, sources

    # -- the user tower's vectors for path 3: known users, sessions, both blended

    def _request_vectors(self, requests: list[RecommendationRequest]) -> dict[int, np.ndarray]:
        """User-tower vectors per request row (row -> vector); rows without one get none.

        A session is pooled by the user tower like a history; a known user with a session
        gets the normalised mean of the two vectors (long-term taste and current intent)."""
        if self.retrieval is None:
            return {}
        users = [request.user_id or "" for request in requests]
        vectors = self._user_vectors(users)
        for row, request in enumerate(requests):
            session = self._session_vector(request.recent_item_ids)
            if session is None:
                continue
            known = vectors.get(row)
            if known is not None:
                session = session + known
                session = session / max(float(np.linalg.norm(session)), 1e-12)
            vectors[row] = session.astype(np.float32)
        return vectors

    def _session_vector(self, recent_item_ids: tuple[str, ...]) -> np.ndarray | None:
        retrieval = self.retrieval
        if retrieval is None or not recent_item_ids:
            return None
        known = [item for item in recent_item_ids if item in self.item_rows]
        if not known:
            return None
        stamps: pd.Series = pd.Series(pd.NaT, index=range(len(known)), dtype="datetime64[ns, UTC]")
        if retrieval.as_of is not None:
            # Oldest first, the last viewed item just before the bundle's as-of moment.
            offsets = pd.to_timedelta(np.arange(len(known), 0, -1), unit="us")
            stamps = pd.Series(retrieval.as_of - offsets)
        session = pd.DataFrame(
            {
                "user_id": SESSION_USER,
                "item_id": pd.Series(known, dtype="string"),
                "ts": stamps,
                "event": SESSION_EVENT,
                "weight": 1.0,
            }
        )
        items = self.catalogue.iloc[self.item_rows.positions(known)].drop(columns="available")
        encoder = retrieval.trained.user_encoder(session, retrieval.as_of, items)
        return encoder.encode([SESSION_USER])[0]

    def _user_vectors(self, user_ids: list[str]) -> dict[int, np.ndarray]:
        """Vectors of the requested users that have a history (row -> vector)."""
        if self.retrieval is None:
            return {}
        retrieval = self.retrieval
        if retrieval.user_matrix is not None:
            found = {row: retrieval.user_rows.get(user) for row, user in enumerate(user_ids)}
            return {row: retrieval.user_matrix[at] for row, at in found.items() if at is not None}
        rows = [row for row, user in enumerate(user_ids) if user in retrieval.known_users]
        if not rows:
            return {}
        encoded = retrieval.encoder.encode([user_ids[row] for row in rows])
        return dict(zip(rows, encoded, strict=True))

    def _item_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        retrieval = self.retrieval
        assert retrieval is not None
        key = (id(item_ids), len(item_ids))
        cached = retrieval.item_vector_cache.get(key)
        if cached is None:
            wanted = pd.DataFrame({"item_id": pd.Series(list(item_ids), dtype="string")})
            rows = wanted.merge(self.catalogue, on="item_id", how="left")
            cached = retrieval.trained.embed_items(rows, retrieval.as_of)
            retrieval.item_vector_cache.clear()
            retrieval.item_vector_cache[key] = cached
        return cached
