"""The served model: a folder of native-format artifacts and the code that answers requests.

`build_bundle` writes what inference needs (recent popularity, the listings with their
availability, each user's masked items and, for the two-tower kind, the encoder's
state_dict + vocabularies, the Annoy index over available listings and the users' recent
histories); `BundleRecommender` loads it and answers "top-K available items for this user".
The MLflow pyfunc wraps the same class, so offline checks, the CLI and the HTTP server all
run one implementation.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.retrieval.popularity import RecentPopularity
from components.store import read_json, write_json

BUNDLE_FORMAT = 1
POPULARITY_SOURCE = "recent_popularity"
FALLBACK_SOURCE = "popularity_fallback"
TWO_TOWER_SOURCE = "two_tower"
MAX_K = 1000
ITEM_DISPLAY_COLUMNS = ("title", "category", "price")
OUTPUT_COLUMNS = ("user_id", "rank", "item_id", "score", "source", *ITEM_DISPLAY_COLUMNS)
#: Extra neighbours asked of the index beyond k and the user's masked items.
ANN_MARGIN = 20


class RequestError(ValueError):
    """A caller's request is malformed; the message names the field and the fix."""


def build_bundle(
    folder: Path,
    model: RecentPopularity,
    items: pd.DataFrame,
    available: pd.Series,
    user_exclusions: pd.DataFrame,
    metadata: dict[str, object],
    *,
    encoder_dir: Path | None = None,
    index_dir: Path | None = None,
    history: pd.DataFrame | None = None,
) -> None:
    """Write the bundle into `folder` (the caller makes it atomic).

    With `encoder_dir` and `index_dir` (two-tower kind) the bundle also holds the encoder,
    the index over the available listings, and `history` (each user's recent interactions,
    what the user tower pools at request time); popularity stays as the fallback.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model")
    catalogue = items.copy()
    catalogue["available"] = available.to_numpy(bool)
    catalogue.to_parquet(folder / "items.parquet", index=False)
    user_exclusions[["user_id", "item_id"]].drop_duplicates().to_parquet(
        folder / "user_exclusions.parquet", index=False
    )
    kind = POPULARITY_SOURCE
    if encoder_dir is not None and index_dir is not None and history is not None:
        kind = TWO_TOWER_SOURCE
        shutil.copytree(encoder_dir, folder / "encoder")
        shutil.copytree(index_dir, folder / "index")
        history.to_parquet(folder / "history.parquet", index=False)
    write_json(folder / "bundle.json", {"format": BUNDLE_FORMAT, "model_kind": kind, **metadata})


@dataclass
class _Retrieval:
    """The two-tower path: user encoder over the bundled histories, and the Annoy index."""

    trained: object
    encoder: object
    index: object
    known_users: frozenset[str]
    as_of: pd.Timestamp | None
    item_vector_cache: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)


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
    retrieval: _Retrieval | None = None

    @classmethod
    def load(cls, folder: Path) -> BundleRecommender:
        folder = Path(folder)
        metadata = read_json(folder / "bundle.json")
        if metadata.get("format") != BUNDLE_FORMAT:
            raise ValueError(
                f"bundle at {folder} has format {metadata.get('format')}, this code reads "
                f"{BUNDLE_FORMAT}; retrain or install the matching rewear version"
            )
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
            retrieval = _load_retrieval(folder, catalogue, metadata)
        return cls(
            model=RecentPopularity.load(folder / "model"),
            item_ids=item_ids,
            item_details=catalogue[list(ITEM_DISPLAY_COLUMNS)].reset_index(drop=True),
            catalogue=catalogue,
            available=catalogue["available"].to_numpy(bool),
            exclusions=exclusions,
            metadata=metadata,
            retrieval=retrieval,
        )

    @property
    def trained_until(self) -> pd.Timestamp | None:
        """The model saw interactions strictly before this time (None: no timestamps).

        For the two-tower kind the user tower reads the bundled histories, which run to
        the end of the snapshot, so that is what counts."""
        if self.retrieval is not None:
            until = self.metadata.get("data_until")
            return None if until is None else pd.Timestamp(str(until))
        return self.model.as_of

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """The `Scorer` protocol, so offline evaluation scores the served model itself;
        the evaluation protocol applies its own availability and history masks. Users
        without history get the popularity fallback, as in `recommend`."""
        popularity = np.array(self.model.score(user_ids, item_ids), dtype=np.float32)
        if self.retrieval is None:
            return popularity
        retrieval = self.retrieval
        known = np.array([str(user) in retrieval.known_users for user in user_ids])
        scores = popularity.copy()
        if known.any():
            users = retrieval.encoder.encode(
                [str(u) for u, k in zip(user_ids, known, strict=True) if k]
            )  # type: ignore[attr-defined]
            scores[known] = users @ self._item_vectors(item_ids).T
        return scores

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 20,
        exclude_item_ids: Sequence[str] = (),
    ) -> pd.DataFrame:
        """Ranked rows (user_id, rank, item_id, score, source, title, category, price)."""
        k = validate_k(k)
        if len(user_ids) == 0:
            raise RequestError("no user_id given: send at least one row with a user_id")
        for user_id in user_ids:
            if user_id is None or (isinstance(user_id, float) and np.isnan(user_id)):
                raise RequestError("user_id is missing in a request row: send a string id")
        blocked = ~self.available.copy()
        request_blocked = pd.Index(self.item_ids).get_indexer(list(exclude_item_ids))
        blocked[request_blocked[request_blocked >= 0]] = True
        popularity = self.model.item_scores(self.item_ids).astype(np.float64)
        vectors = self._user_vectors([str(user) for user in user_ids])
        frames = []
        for row, user_id in enumerate(user_ids):
            user_blocked = blocked.copy()
            masked = self.exclusions.get(str(user_id))
            if masked is not None:
                user_blocked[masked[masked >= 0]] = True
            order, scores, sources = self._rank_one(vectors.get(row), k, user_blocked, popularity)
            frame = self.item_details.iloc[order].reset_index(drop=True)
            frame.insert(0, "source", sources)
            frame.insert(0, "score", scores)
            frame.insert(0, "item_id", self.item_ids[order])
            frame.insert(0, "rank", np.arange(1, len(order) + 1))
            frame.insert(0, "user_id", str(user_id))
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)[list(OUTPUT_COLUMNS)]

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
            found = index.query(user_vector[None, :], min(wanted, index.count))  # type: ignore[attr-defined]
            positions = found.positions[0]
            keep = positions >= 0
            ids = index.ids_at(positions[keep])  # type: ignore[attr-defined]
            rows = pd.Index(self.item_ids).get_indexer(ids)
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

    def _user_vectors(self, user_ids: list[str]) -> dict[int, np.ndarray]:
        """Vectors of the requested users that have a history (row -> vector)."""
        if self.retrieval is None:
            return {}
        rows = [row for row, user in enumerate(user_ids) if user in self.retrieval.known_users]
        if not rows:
            return {}
        encoded = self.retrieval.encoder.encode([user_ids[row] for row in rows])  # type: ignore[attr-defined]
        return dict(zip(rows, encoded, strict=True))

    def _item_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        retrieval = self.retrieval
        assert retrieval is not None
        key = (id(item_ids), len(item_ids))
        cached = retrieval.item_vector_cache.get(key)
        if cached is None:
            wanted = pd.DataFrame({"item_id": pd.Series(list(item_ids), dtype="string")})
            rows = wanted.merge(self.catalogue, on="item_id", how="left")
            cached = retrieval.trained.embed_items(rows, retrieval.as_of)  # type: ignore[attr-defined]
            retrieval.item_vector_cache.clear()
            retrieval.item_vector_cache[key] = cached
        return cached


def _load_retrieval(
    folder: Path, catalogue: pd.DataFrame, metadata: dict[str, object]
) -> _Retrieval:
    from components.retrieval.ann_index import AnnIndex
    from components.retrieval.two_tower import TrainedTwoTower

    trained = TrainedTwoTower.load(folder / "encoder")
    history = pd.read_parquet(folder / "history.parquet")
    until = metadata.get("data_until")
    as_of = None if until is None else pd.Timestamp(str(until)) + pd.Timedelta(microseconds=1)
    items = catalogue.drop(columns=["available"])
    encoder = trained.user_encoder(history, as_of, items)
    return _Retrieval(
        trained=trained,
        encoder=encoder,
        index=AnnIndex.load(folder / "index"),
        known_users=frozenset(history["user_id"].astype(str)),
        as_of=as_of,
    )


def validate_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise RequestError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
    if not 1 <= int(k) <= MAX_K:
        raise RequestError(f"k must be between 1 and {MAX_K}, got {k}")
    return int(k)
