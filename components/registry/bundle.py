"""The served model: a folder of native-format artifacts and the code that answers requests.

`build_bundle` writes what inference needs (the fitted model, the listings with their
availability, each user's masked items); `BundleRecommender` loads it and answers
"top-K available items for this user". The MLflow pyfunc wraps the same class, so offline
checks, the CLI and the HTTP server all run one implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.retrieval.popularity import RecentPopularity
from components.store import read_json, write_json

BUNDLE_FORMAT = 1
#: Which model produced each returned item (later stages add their own sources).
SOURCE_NAME = "recent_popularity"
MAX_K = 1000
ITEM_DISPLAY_COLUMNS = ("title", "category", "price")
OUTPUT_COLUMNS = ("user_id", "rank", "item_id", "score", "source", *ITEM_DISPLAY_COLUMNS)


class RequestError(ValueError):
    """A caller's request is malformed; the message names the field and the fix."""


def build_bundle(
    folder: Path,
    model: RecentPopularity,
    items: pd.DataFrame,
    available: pd.Series,
    user_exclusions: pd.DataFrame,
    metadata: dict[str, object],
) -> None:
    """Write the bundle into `folder` (the caller makes it atomic)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model")
    catalogue = items[["item_id", *ITEM_DISPLAY_COLUMNS]].copy()
    catalogue["available"] = available.to_numpy(bool)
    catalogue.to_parquet(folder / "items.parquet", index=False)
    user_exclusions[["user_id", "item_id"]].drop_duplicates().to_parquet(
        folder / "user_exclusions.parquet", index=False
    )
    write_json(
        folder / "bundle.json",
        {"format": BUNDLE_FORMAT, "model_kind": "recent_popularity", **metadata},
    )


@dataclass(frozen=True)
class BundleRecommender:
    """Answers top-K requests from a bundle folder; sold/unavailable items are never returned."""

    model: RecentPopularity
    item_ids: np.ndarray
    item_details: pd.DataFrame
    available: np.ndarray
    exclusions: dict[str, np.ndarray]
    metadata: dict[str, object]

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
        return cls(
            model=RecentPopularity.load(folder / "model"),
            item_ids=item_ids,
            item_details=catalogue[list(ITEM_DISPLAY_COLUMNS)].reset_index(drop=True),
            available=catalogue["available"].to_numpy(bool),
            exclusions=exclusions,
            metadata=metadata,
        )

    @property
    def trained_until(self) -> pd.Timestamp | None:
        """The model saw interactions strictly before this time (None: no timestamps)."""
        return self.model.as_of

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """The `Scorer` protocol, so offline evaluation scores the served model itself;
        the evaluation protocol applies its own availability and history masks."""
        return self.model.score(user_ids, item_ids)

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
        base = self.model.item_scores(self.item_ids).astype(np.float64)
        base[~self.available] = -np.inf
        request_blocked = pd.Index(self.item_ids).get_indexer(list(exclude_item_ids))
        base[request_blocked[request_blocked >= 0]] = -np.inf
        frames = []
        for user_id in user_ids:
            if user_id is None or (isinstance(user_id, float) and np.isnan(user_id)):
                raise RequestError("user_id is missing in a request row: send a string id")
            scores = base.copy()
            masked = self.exclusions.get(str(user_id))
            if masked is not None:
                scores[masked[masked >= 0]] = -np.inf
            order = np.lexsort((np.arange(len(scores)), -scores))[:k]
            order = order[np.isfinite(scores[order])]
            frame = self.item_details.iloc[order].reset_index(drop=True)
            frame.insert(0, "source", SOURCE_NAME)
            frame.insert(0, "score", scores[order])
            frame.insert(0, "item_id", self.item_ids[order])
            frame.insert(0, "rank", np.arange(1, len(order) + 1))
            frame.insert(0, "user_id", str(user_id))
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)[list(OUTPUT_COLUMNS)]


def validate_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise RequestError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
    if not 1 <= int(k) <= MAX_K:
        raise RequestError(f"k must be between 1 and {MAX_K}, got {k}")
    return int(k)
