"""Point-in-time features of (user, candidate item) pairs for the LightGBM ranker.

`PointInTimeFeatures.build` sees only interactions strictly before `moment` and listing
facts knowable at `moment` (created / sold before it); `transform` then turns a merged
candidate frame (`merge_candidates`) into one feature row per candidate. The same object,
saved inside the served bundle, computes the features at request time: one implementation
for training and serving.

Features (NaN where unknown, e.g. no timestamps or no listing attributes):
- user: events, purchases, distinct items, days since first / last event, mean and spread
  of the log prices they interacted with;
- item: log price, age in days, condition and category (categorical), seller's listings and
  sales before `moment`, graded popularity over `config.popularity_windows` (1 / 7 / 28 days
  by default) and all time, each also as a share of all activity in its window, distinct
  users;
- user x item: share of the user's (graded) activity in the item's category, brand, size;
  price z-score against the user's usual prices; two-tower cosine of user and item, and
  best cosine to the user's last `recent_items` items;
- retrieval: fusion score and rank, number of sources, each source's score, rank, and
  score relative to the user's best score from that source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import RankerConfig
from components.ids import IdPositions
from components.store import read_json, write_json

AFFINITY_COLUMNS = ("category", "brand", "size")
CATEGORICAL_FEATURES = ("i_category", "i_condition")
#: Item table columns that hold strings (the rest are numbers).
ITEM_TEXT_FEATURES = (*CATEGORICAL_FEATURES, *AFFINITY_COLUMNS)
#: Columns of the merged candidate frame that are not features.
CANDIDATE_KEYS = ("user_id", "item_id")
#: Columns of the merged candidates that become retrieval_<name> features.
RETRIEVAL_COLUMNS = ("score", "rank", "n_sources")
DAY_SECONDS = 86_400.0


def event_grades(frame: pd.DataFrame, config: RankerConfig) -> np.ndarray:
    """Graded relevance of each interaction (labels, and the weight of activity features)."""
    grades = frame["event"].map(config.grades).astype(float)
    ratings = frame["event"].eq("rating").to_numpy()
    if ratings.any():
        high = frame["weight"].astype(float).fillna(0.0).to_numpy() >= 4.0
        rating_grade = np.where(high, config.rating_high, config.rating_low)
        grades = grades.where(~ratings, rating_grade)
    return grades.fillna(1.0).to_numpy(dtype=float)


@dataclass
class PointInTimeFeatures:
    """Per-user and per-item tables at `moment`, and the pair features built from them."""

    moment: pd.Timestamp | None
    users: pd.DataFrame
    items: pd.DataFrame
    #: Per affinity column: share of a user's graded activity per value, (user, value) index.
    affinity: dict[str, pd.Series]
    #: Each user's last items, most recent first.
    recent: dict[str, list[str]]
    categories: dict[str, list[str]]
    #: Optional two-tower vectors: (user ids) -> (n, d) and (item ids) -> (n, d) unit rows.
    user_vectors: Callable[[Sequence[str]], np.ndarray] | None = field(default=None, repr=False)
    item_vectors: Callable[[Sequence[str]], np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        history: pd.DataFrame,
        items: pd.DataFrame,
        moment: pd.Timestamp | None,
        config: RankerConfig,
        *,
        categories: Mapping[str, Sequence[str]] | None = None,
        user_vectors: Callable[[Sequence[str]], np.ndarray] | None = None,
        item_vectors: Callable[[Sequence[str]], np.ndarray] | None = None,
    ) -> PointInTimeFeatures:
        """Tables from `history` strictly before `moment` (all of it when None).

        `categories` fixes the categorical vocabularies (the trained ranker's, at serving
        time); by default they come from `items`.
        """
        if moment is not None and history["ts"].notna().any():
            history = history[history["ts"] < moment]
        history = history.assign(_grade=event_grades(history, config))
        catalogue = _item_attributes(items)
        if categories is None:
            categories = {
                "i_category": _vocabulary(catalogue["category"]),
                "i_condition": _vocabulary(catalogue["condition"]),
            }
        return cls(
            moment=moment,
            users=_user_table(history, catalogue, moment),
            items=_item_table(history, catalogue, moment, config.popularity_windows),
            affinity=_affinities(history, catalogue),
            recent=_recent_items(history, config.recent_items),
            categories={name: list(values) for name, values in categories.items()},
            user_vectors=user_vectors,
            item_vectors=item_vectors,
        )

    def transform(self, candidates: pd.DataFrame) -> pd.DataFrame:
        """One feature row per candidate row, same order; user_id and item_id kept."""
        retrieval = {
            column: candidates[column].to_numpy(dtype=float)
            for column in candidates.columns
            if column in RETRIEVAL_COLUMNS or column.startswith(("score_", "rank_"))
        }
        columns = self.feature_columns(
            candidates["user_id"].astype(str).to_numpy(dtype=object),
            candidates["item_id"].astype(str).to_numpy(dtype=object),
            retrieval,
        )
        frame = pd.DataFrame(columns)
        for name, vocabulary in self.categories.items():
            frame[name] = pd.Categorical(columns[name], categories=vocabulary)
        return frame

    def feature_columns(
        self, users: np.ndarray, item_ids: np.ndarray, retrieval: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The feature columns of (users[i], item_ids[i]) pairs as arrays (categorical ones
        as object arrays of their values): plain numpy lookups, no pandas joins, since the
        served model calls this per request. `retrieval` holds the merged candidates'
        score, rank, n_sources and score_<source> / rank_<source> columns."""
        lookups = self._lookups
        user_rows = lookups["user_index"].positions(users)
        item_rows = lookups["item_index"].positions(item_ids)
        columns: dict[str, np.ndarray] = {"user_id": users, "item_id": item_ids}
        for table, rows in (("users", user_rows), ("items", item_rows)):
            for name, values in lookups[table].items():
                taken = values[np.maximum(rows, 0)] if len(values) else values[:0]
                if len(taken) < len(rows):  # an empty table: everything unknown
                    taken = np.full(len(rows), None if values.dtype == object else np.nan)
                if values.dtype == object:
                    taken = np.where(rows >= 0, taken, None)
                else:
                    taken = np.where(rows >= 0, taken, np.nan)
                columns[name] = taken
        attributes = {column: columns.pop(column) for column in AFFINITY_COLUMNS}
        for column in AFFINITY_COLUMNS:
            values = attributes[column]
            shares = lookups["affinity"].get(column, {})
            unknown = pd.isna(values)
            share = np.full(len(users), np.nan)
            # Only rows with a value are looked up (none when listings lack the attribute).
            known = np.flatnonzero(~unknown)
            share[known] = np.fromiter(
                (shares.get(pair, 0.0) for pair in zip(users[known], values[known], strict=True)),
                float,
                len(known),
            )
            columns[f"x_{column}_share"] = share
        columns["x_price_z"] = (columns["i_log_price"] - columns["u_log_price_mean"]) / (
            np.nan_to_num(columns["u_log_price_std"], nan=0.0) + 0.25
        )
        columns["x_cos_user"], columns["x_cos_recent_max"] = self._similarities(users, item_ids)
        for name in RETRIEVAL_COLUMNS:
            columns[f"retrieval_{name}"] = np.asarray(retrieval[name], dtype=float)
        user_codes = pd.factorize(users)[0]
        for column, values in retrieval.items():
            if not column.startswith(("score_", "rank_")):
                continue
            columns[column] = np.asarray(values, dtype=float)
            if column.startswith("score_"):
                # Scores relative to the user's best: comparable across users and across
                # the label-stage and test-stage fits of a source.
                columns[f"rel_{column}"] = _relative_to_user_best(user_codes, columns[column])
        return columns

    @cached_property
    def _lookups(self) -> dict[str, Any]:
        """Index and column arrays of the tables, and affinities as dicts, built once."""
        return {
            "user_index": IdPositions(self.users.index.to_numpy(dtype=object)),
            "item_index": IdPositions(self.items.index.to_numpy(dtype=object)),
            "users": {c: self.users[c].to_numpy(dtype=float) for c in self.users.columns},
            "items": {
                c: self.items[c].to_numpy(dtype=object if c in ITEM_TEXT_FEATURES else float)
                for c in self.items.columns
            },
            "affinity": {
                column: dict(zip(shares.index.tolist(), shares.to_numpy().tolist(), strict=True))
                for column, shares in self.affinity.items()
            },
        }

    def _similarities(
        self, users: np.ndarray, item_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        cos_user = np.full(len(users), np.nan)
        cos_recent = np.full(len(users), np.nan)
        if self.user_vectors is None or self.item_vectors is None or not len(users):
            return cos_user, cos_recent
        codes, unique_users = pd.factorize(users)
        user_matrix = np.asarray(self.user_vectors(list(unique_users)), dtype=np.float32)
        item_matrix = np.asarray(self.item_vectors(list(item_ids)), dtype=np.float32)
        cos_user = np.einsum("ij,ij->i", user_matrix[codes], item_matrix).astype(float)
        order = np.argsort(codes, kind="stable")
        bounds = np.r_[0, np.cumsum(np.bincount(codes, minlength=len(unique_users)))]
        # Every user's recent items looked up in one call (a call per user costs its fixed
        # overhead once per user), then each user's rows against their own.
        recent = [self.recent.get(user) or [] for user in unique_users]
        lengths = np.array([len(items) for items in recent], dtype=np.int64)
        if not lengths.sum():
            return cos_user, cos_recent
        flat = [item for items in recent for item in items]
        recent_vectors = np.asarray(self.item_vectors(flat), dtype=np.float32)
        starts = np.r_[0, np.cumsum(lengths)]
        for code in np.flatnonzero(lengths):
            rows = order[bounds[code] : bounds[code + 1]]
            recent_matrix = recent_vectors[starts[code] : starts[code + 1]]
            cos_recent[rows] = (item_matrix[rows] @ recent_matrix.T).max(axis=1)
        return cos_user, cos_recent

    def save(self, folder: Path) -> None:
        """Native formats: two parquet tables, affinity parquet, JSON for the rest."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.users.to_parquet(folder / "users.parquet")
        self.items.to_parquet(folder / "items.parquet")
        parts = [
            pd.DataFrame(
                {
                    "column": column,
                    "user_id": shares.index.get_level_values(0).astype(str),
                    "value": shares.index.get_level_values(1).astype(str),
                    "share": shares.to_numpy(),
                }
            )
            for column, shares in self.affinity.items()
        ]
        empty = pd.DataFrame({"column": [], "user_id": [], "value": [], "share": []})
        long = pd.concat(parts, ignore_index=True) if parts else empty
        long.astype({"column": str, "user_id": str, "value": str, "share": float}).to_parquet(
            folder / "affinity.parquet"
        )
        write_json(
            folder / "features.json",
            {
                "moment": None if self.moment is None else self.moment.isoformat(),
                "recent": self.recent,
                "categories": self.categories,
            },
        )

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        user_vectors: Callable[[Sequence[str]], np.ndarray] | None = None,
        item_vectors: Callable[[Sequence[str]], np.ndarray] | None = None,
    ) -> PointInTimeFeatures:
        folder = Path(folder)
        meta = read_json(folder / "features.json")
        long = pd.read_parquet(folder / "affinity.parquet")
        affinity = {
            str(column): pd.Series(
                part["share"].to_numpy(),
                index=pd.MultiIndex.from_arrays(
                    [part["user_id"].astype(object), part["value"].astype(object)]
                ),
            )
            for column, part in long.groupby("column", sort=False)
        }
        users = pd.read_parquet(folder / "users.parquet")
        items = pd.read_parquet(folder / "items.parquet")
        users.index = users.index.astype(object)
        items.index = items.index.astype(object)
        return cls(
            moment=None if meta["moment"] is None else pd.Timestamp(meta["moment"]),
            users=users,
            items=items,
            affinity=affinity,
            recent={str(k): list(v) for k, v in meta["recent"].items()},
            categories=meta["categories"],
            user_vectors=user_vectors,
            item_vectors=item_vectors,
        )


def _relative_to_user_best(user_codes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """score / the user's highest score of that source (NaN stays NaN; <= 0 best: NaN)."""
    if not len(scores):
        return scores.copy()
    best = np.full(user_codes.max() + 1, -np.inf)
    finite = np.isfinite(scores)
    np.maximum.at(best, user_codes[finite], scores[finite])
    top = best[user_codes]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(finite & (top > 0), scores / top, np.nan)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The model inputs of a transformed frame (everything but the ids and the label)."""
    return [c for c in frame.columns if c not in (*CANDIDATE_KEYS, "label", "label_window")]


# ------------------------------------------------------------------------- tables


def _item_attributes(items: pd.DataFrame) -> pd.DataFrame:
    """The listing columns features use, ids as plain strings (absent columns are null)."""
    columns = ("seller_id", "category", "brand", "size", "condition", "price", "created_at")
    frame = pd.DataFrame({"item_id": items["item_id"].astype(str).to_numpy(dtype=object)})
    for column in (*columns, "sold_at"):
        if column in items.columns:
            values = items[column].to_numpy()
            if column not in ("price", "created_at", "sold_at"):
                values = items[column].astype(object).where(items[column].notna(), None)
                values = values.to_numpy(dtype=object)
            frame[column] = values
        else:
            frame[column] = None
    return frame


def _vocabulary(values: pd.Series) -> list[str]:
    return sorted({str(v) for v in values.dropna().unique()})


def _days_before(moment: pd.Timestamp | None, stamps: pd.Series) -> np.ndarray:
    if moment is None:
        return np.full(len(stamps), np.nan)
    stamps = pd.to_datetime(stamps, utc=True)
    return ((moment - stamps).dt.total_seconds() / DAY_SECONDS).to_numpy(float, na_value=np.nan)


def _log_price(prices: pd.Series) -> pd.Series:
    values = pd.to_numeric(prices, errors="coerce").astype(float)
    return np.log1p(values.clip(lower=0))


def _user_table(
    history: pd.DataFrame, catalogue: pd.DataFrame, moment: pd.Timestamp | None
) -> pd.DataFrame:
    frame = history[["user_id", "item_id", "ts", "event"]].assign(
        user_id=history["user_id"].astype(str).to_numpy(dtype=object),
        item_id=history["item_id"].astype(str).to_numpy(dtype=object),
    )
    prices = _log_price(catalogue.set_index("item_id")["price"])
    frame["_log_price"] = prices.reindex(frame["item_id"]).to_numpy()
    grouped = frame.groupby("user_id", sort=True)
    table = pd.DataFrame(
        {
            "u_events": grouped.size().astype(float),
            "u_purchases": frame["event"].eq("purchase").groupby(frame["user_id"]).sum(),
            "u_items": grouped["item_id"].nunique().astype(float),
            "u_log_price_mean": grouped["_log_price"].mean(),
            "u_log_price_std": grouped["_log_price"].std(),
        }
    )
    if moment is not None and frame["ts"].notna().any():
        table["u_days_since_last"] = _days_before(moment, grouped["ts"].max()).tolist()
        table["u_days_since_first"] = _days_before(moment, grouped["ts"].min()).tolist()
    else:
        table["u_days_since_last"] = np.nan
        table["u_days_since_first"] = np.nan
    table.index = table.index.astype(object)
    table.index.name = "user_id"
    return table.astype(float)


def _item_table(
    history: pd.DataFrame,
    catalogue: pd.DataFrame,
    moment: pd.Timestamp | None,
    popularity_windows: Sequence[str],
) -> pd.DataFrame:
    table = catalogue.set_index("item_id")
    result = pd.DataFrame(index=table.index)
    result["i_log_price"] = _log_price(table["price"]).to_numpy()
    result["i_age_days"] = _days_before(moment, table["created_at"])
    result["i_category"] = table["category"].to_numpy(dtype=object)
    result["i_condition"] = table["condition"].to_numpy(dtype=object)
    for column in AFFINITY_COLUMNS:
        result[column] = table[column].to_numpy(dtype=object)
    # Seller facts knowable at `moment`: listings created and sold before it.
    created = pd.to_datetime(table["created_at"], utc=True)
    sold = pd.to_datetime(table["sold_at"], utc=True)
    listed = created.notna() if moment is None else created < moment
    listed = listed | created.isna()
    sold_before = sold.notna() if moment is None else sold < moment
    sellers = table["seller_id"]
    if sellers.notna().any():
        listings = listed.groupby(sellers).sum()
        sales = (sold_before & listed).groupby(sellers).sum()
        result["i_seller_listings"] = listings.reindex(sellers).to_numpy(float)
        result["i_seller_sales"] = sales.reindex(sellers).to_numpy(float)
        result["i_seller_sell_rate"] = result["i_seller_sales"] / result["i_seller_listings"].where(
            result["i_seller_listings"] > 0
        )
    else:
        for name in ("i_seller_listings", "i_seller_sales", "i_seller_sell_rate"):
            result[name] = np.nan
    item_ids = history["item_id"].astype(str).to_numpy(dtype=object)
    grades = pd.Series(history["_grade"].to_numpy(), index=item_ids)
    users = pd.Series(history["user_id"].astype(str).to_numpy(dtype=object), index=item_ids)
    result["i_users"] = users.groupby(level=0).nunique().reindex(result.index).fillna(0.0)
    has_time = moment is not None and history["ts"].notna().any()
    popularity: dict[str, pd.Series | None] = {"all": grades.groupby(level=0).sum()}
    for window in popularity_windows:
        if not has_time:
            popularity[window.lower()] = None
            continue
        recent = (history["ts"] >= moment - pd.Timedelta(window)).to_numpy()
        popularity[window.lower()] = grades[recent].groupby(level=0).sum()
    for name, counts in popularity.items():
        if counts is None:
            result[f"i_pop_{name}"] = result[f"i_pop_share_{name}"] = np.nan
            continue
        result[f"i_pop_{name}"] = counts.reindex(result.index).fillna(0.0)
        # The same count as a share of all graded activity in the window: the ranker learns
        # from label windows whose activity volume differs from the serving moment's, and a
        # share means the same there and here where a raw count does not.
        total = float(counts.sum())
        result[f"i_pop_share_{name}"] = result[f"i_pop_{name}"] / total if total > 0 else 0.0
    result.index = result.index.astype(object)
    result.index.name = "item_id"
    return result


def _affinities(history: pd.DataFrame, catalogue: pd.DataFrame) -> dict[str, pd.Series]:
    table = catalogue.set_index("item_id")
    users = history["user_id"].astype(str).to_numpy(dtype=object)
    item_ids = history["item_id"].astype(str).to_numpy(dtype=object)
    grades = history["_grade"].to_numpy(dtype=float)
    result: dict[str, pd.Series] = {}
    for column in AFFINITY_COLUMNS:
        values = table[column].reindex(item_ids).to_numpy(dtype=object)
        known = ~pd.isna(values)
        if not known.any():
            continue
        frame = pd.DataFrame({"user": users[known], "value": values[known], "g": grades[known]})
        sums = frame.groupby(["user", "value"], sort=True)["g"].sum()
        totals = sums.groupby(level=0).transform("sum")
        result[column] = (sums / totals).astype(float)
    return result


def _recent_items(history: pd.DataFrame, n: int) -> dict[str, list[str]]:
    ts = history["ts"]
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        # datetime64 values, not an object array of Timestamps (slow to build)
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    frame = pd.DataFrame(
        {
            "user_id": history["user_id"].astype(str).to_numpy(dtype=object),
            "item_id": history["item_id"].astype(str).to_numpy(dtype=object),
            "ts": ts.to_numpy(),
            "_row": np.arange(len(history)),
        }
    )
    frame = frame.sort_values(["user_id", "ts", "_row"], kind="stable", na_position="first")
    frame = frame.drop_duplicates(["user_id", "item_id"], keep="last")
    tails = frame.groupby("user_id", sort=False).tail(n)
    return {
        str(user): list(group["item_id"].to_numpy()[::-1])
        for user, group in tails.groupby("user_id", sort=False)
    }
