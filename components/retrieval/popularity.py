"""Recent popularity: event-weighted, time-decayed interaction counts over a trailing window.

It is the first model rewear registers and the baseline every later model is compared with.
The same class scores items for offline evaluation and inside the served bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import PopularityConfig
from components.store import read_json, write_json


@dataclass(frozen=True)
class RecentPopularity:
    """Item scores as of `as_of`; every user gets the same scores (masking is per user)."""

    item_ids: np.ndarray
    scores: np.ndarray
    as_of: pd.Timestamp | None
    config: PopularityConfig
    _positions: dict[int, tuple[Sequence[str], np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def fit(
        cls,
        interactions: pd.DataFrame,
        config: PopularityConfig,
        as_of: pd.Timestamp | None = None,
    ) -> RecentPopularity:
        """Score items from `interactions` strictly before `as_of` (default: after the last).

        Without timestamps (fixed splits) every interaction counts equally.
        """
        frame = interactions
        has_time = frame["ts"].notna().any()
        if has_time:
            if as_of is None:
                as_of = frame["ts"].max() + pd.Timedelta(microseconds=1)
            frame = frame[frame["ts"] < as_of]
            frame = frame[frame["ts"] >= as_of - pd.Timedelta(config.window)]
        weights = frame["event"].map(config.event_weights).fillna(1.0).to_numpy(float)
        if has_time and config.half_life is not None and len(frame):
            age = (as_of - frame["ts"]).dt.total_seconds().to_numpy()
            half_life = pd.Timedelta(config.half_life).total_seconds()
            weights = weights * np.power(0.5, age / half_life)
        totals = (
            pd.Series(weights, index=frame["item_id"].to_numpy())
            .groupby(level=0)
            .sum()
            .sort_values(ascending=False, kind="stable")
        )
        return cls(
            item_ids=totals.index.to_numpy(dtype=object),
            scores=totals.to_numpy(dtype=np.float64),
            as_of=as_of if has_time else None,
            config=config,
        )

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """(len(user_ids), len(item_ids)) float32 scores; unseen items score 0."""
        aligned = self.item_scores(item_ids)
        return np.broadcast_to(aligned, (len(user_ids), len(aligned)))

    def item_scores(self, item_ids: Sequence[str]) -> np.ndarray:
        from components.retrieval.user_item_scorer import item_positions

        positions = item_positions(self._positions, self.item_ids, item_ids)
        scores = np.zeros(len(positions), dtype=np.float32)
        known = positions >= 0
        scores[known] = self.scores[positions[known]]
        return scores

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"item_id": self.item_ids, "score": self.scores}).to_parquet(
            folder / "popularity.parquet", index=False
        )
        write_json(
            folder / "popularity.json",
            {
                "as_of": None if self.as_of is None else self.as_of.isoformat(),
                "config": self.config.model_dump(mode="json"),
            },
        )

    @classmethod
    def load(cls, folder: Path) -> RecentPopularity:
        folder = Path(folder)
        table = pd.read_parquet(folder / "popularity.parquet")
        meta = read_json(folder / "popularity.json")
        return cls(
            item_ids=table["item_id"].astype(str).to_numpy(dtype=object),
            scores=table["score"].to_numpy(np.float64),
            as_of=None if meta["as_of"] is None else pd.Timestamp(meta["as_of"]),
            config=PopularityConfig.model_validate(meta["config"]),
        )
