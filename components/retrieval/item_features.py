"""Listing features for the two-tower item tower: one implementation for training and serving.

A listing is described by what a brand-new one already has, so that it can be embedded the
moment it is posted:
- categorical attributes (category, subcategory, brand, size, condition, colour, seller),
  each with a vocabulary built at fit time from the listings seen in training; null, unseen
  and new values share the reserved index 0 (`UNKNOWN`);
- price, bucketed by the quantiles of the training listings' prices (0: no price);
- listing age at `as_of`, in log-spaced day buckets from one hour to a year (0: unknown age,
  i.e. no `created_at` or no `as_of`; a listing created after `as_of` counts as brand new);
- title text (plus MovieLens-style `genres`), as hashed word unigrams, word bigrams and
  character 3-grams of words, fed to an `nn.EmbeddingBag`. The hash is zlib.crc32 (stable
  across processes and machines; Python's `hash()` is salted per process);
- the item id, through a vocabulary of the ids seen in training (unknown: index 0).

Everything here is numpy; the item tower in `components.retrieval.two_tower_network` turns
these arrays into tensors.
"""

from __future__ import annotations

import functools
import itertools
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: Categorical listing columns the item tower embeds (absent columns count as null).
CATEGORICAL_COLUMNS = (
    "category",
    "subcategory",
    "brand",
    "size",
    "condition",
    "colour",
    "seller_id",
)
#: The reserved index of null, unseen and unknown values (ids, attributes, buckets).
UNKNOWN = 0
#: Text columns hashed into the title bag.
TEXT_COLUMNS = ("title", "genres")
#: Item columns the fitted model keeps to embed the items of a user's history.
ATTRIBUTE_COLUMNS = ("item_id", *CATEGORICAL_COLUMNS, "price", "title", "genres")
#: Ages (days) of the log-spaced bucket edges span one hour to one year.
_AGE_RANGE_DAYS = (1.0 / 24.0, 365.0)
_WORD = re.compile(r"\w+", re.UNICODE)
_US_PER_DAY = 86_400_000_000
#: `created_us` of a listing without a creation date.
NO_DATE = np.iinfo(np.int64).min


def title_tokens(title: str | None, genres: str | None = None) -> list[str]:
    """Word unigrams, word bigrams and character 3-grams (with word boundaries) of a title,
    plus one token per `|`-separated genre; lower-cased, prefixed by their kind."""
    tokens: list[str] = []
    if isinstance(title, str) and title:
        words = _WORD.findall(title.lower())
        tokens += [f"w:{word}" for word in words]
        tokens += [f"b:{first} {second}" for first, second in itertools.pairwise(words)]
        for word in words:
            padded = f"<{word}>"
            tokens += [f"c:{padded[i : i + 3]}" for i in range(len(padded) - 2)]
    if isinstance(genres, str) and genres:
        tokens += [f"g:{genre.strip().lower()}" for genre in genres.split("|") if genre.strip()]
    return tokens


def hash_tokens(tokens: list[str], n_buckets: int) -> np.ndarray:
    """Stable bucket of each token in [1, n_buckets) (0 stays free for padding)."""
    return np.fromiter(
        (zlib.crc32(token.encode("utf-8")) % (n_buckets - 1) + 1 for token in tokens),
        dtype=np.int64,
        count=len(tokens),
    )


@functools.lru_cache(maxsize=2**17)
def _hashed_title(title: str | None, genres: str | None, n_buckets: int) -> np.ndarray:
    """Hashed tokens of one title (cached: catalogues are re-embedded at every index build)."""
    hashed = hash_tokens(title_tokens(title, genres), n_buckets)
    hashed.flags.writeable = False
    return hashed


def age_bucket_edges(n_buckets: int) -> np.ndarray:
    """`n_buckets - 2` log-spaced edges (days): buckets 1..n_buckets-1, 0 for unknown."""
    return np.geomspace(*_AGE_RANGE_DAYS, num=n_buckets - 2)


@dataclass(frozen=True)
class ItemArrays:
    """Features of n listings, aligned by row (numpy, ready for the tower)."""

    #: Item-id index (0: unknown, or dropped out).
    ids: np.ndarray
    #: (n, len(CATEGORICAL_COLUMNS)) vocabulary indices.
    categorical: np.ndarray
    price: np.ndarray
    #: Microseconds since the epoch of `created_at`; INT64_MIN where unknown.
    created_us: np.ndarray
    #: Hashed text tokens of all rows, concatenated; row r owns text[offsets[r]:offsets[r+1]].
    text: np.ndarray
    text_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> ItemArrays:
        """The features of `rows` (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.text_offsets[rows]
        lengths = self.text_offsets[rows + 1] - starts
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return ItemArrays(
            ids=self.ids[rows],
            categorical=self.categorical[rows],
            price=self.price[rows],
            created_us=self.created_us[rows],
            text=self.text[positions],
            text_offsets=offsets,
        )


@dataclass(frozen=True)
class ItemFeaturizer:
    """Vocabularies and bucket edges fitted on the training listings."""

    #: Column -> known values; value v has index vocabularies[column].index(v) + 1.
    vocabularies: dict[str, tuple[str, ...]]
    #: Item ids with an id embedding (index = position + 1).
    item_ids: tuple[str, ...]
    price_edges: np.ndarray
    age_edges: np.ndarray
    text_buckets: int

    @classmethod
    def fit(
        cls,
        items: pd.DataFrame,
        *,
        price_buckets: int,
        age_buckets: int,
        text_buckets: int,
        item_ids: pd.Index | None = None,
    ) -> ItemFeaturizer:
        """Vocabularies from `items` (the listings seen in training); ids from `item_ids`
        (default: every id of `items`). Values are sorted so the result is order-free."""
        vocabularies = {
            column: tuple(sorted(items[column].dropna().astype(str).unique()))
            if column in items
            else ()
            for column in CATEGORICAL_COLUMNS
        }
        prices = (
            pd.to_numeric(items["price"], errors="coerce").dropna().to_numpy(float)
            if "price" in items
            else np.zeros(0)
        )
        if len(prices):
            quantiles = np.linspace(0, 1, price_buckets + 1)[1:-1]
            price_edges = np.unique(np.quantile(prices, quantiles))
        else:
            price_edges = np.zeros(0)
        ids = items["item_id"] if item_ids is None else pd.Series(item_ids)
        has_text = any(column in items and items[column].notna().any() for column in TEXT_COLUMNS)
        return cls(
            vocabularies=vocabularies,
            item_ids=tuple(sorted(ids.astype(str).unique())),
            price_edges=price_edges.astype(np.float64),
            age_edges=age_bucket_edges(age_buckets),
            # No text at all (e.g. a fixed split): a 2-row table instead of a dead one.
            text_buckets=text_buckets if has_text else 2,
        )

    # ------------------------------------------------------------------ sizes

    @property
    def vocabulary_sizes(self) -> tuple[int, ...]:
        """Embedding rows per categorical column (values + UNKNOWN)."""
        return tuple(len(self.vocabularies[column]) + 1 for column in CATEGORICAL_COLUMNS)

    @property
    def n_price_buckets(self) -> int:
        return len(self.price_edges) + 2

    @property
    def n_age_buckets(self) -> int:
        return len(self.age_edges) + 2

    # ------------------------------------------------------------------ transform

    def transform(self, items: pd.DataFrame) -> ItemArrays:
        """Static features of each row of `items` (age is computed later, per `as_of`)."""
        n = len(items)
        categorical = np.zeros((n, len(CATEGORICAL_COLUMNS)), dtype=np.int64)
        for position, column in enumerate(CATEGORICAL_COLUMNS):
            vocabulary = self.vocabularies[column]
            if column in items and vocabulary:
                codes = pd.Index(vocabulary).get_indexer(items[column].astype("object"))
                categorical[:, position] = codes + 1  # -1 (null or unseen) -> UNKNOWN
        price = np.zeros(n, dtype=np.int64)
        if "price" in items and len(self.price_edges):
            values = pd.to_numeric(items["price"], errors="coerce").to_numpy(float)
            known = np.isfinite(values)
            price[known] = np.searchsorted(self.price_edges, values[known], side="right") + 1
        created_us = np.full(n, NO_DATE, dtype=np.int64)
        if "created_at" in items:
            created = pd.to_datetime(items["created_at"], utc=True)
            known = created.notna().to_numpy()
            created_us[known] = _epoch_us(created[known])
        ids = pd.Index(self.item_ids).get_indexer(items["item_id"].astype("object")) + 1
        text, offsets = self._hashed_text(items)
        return ItemArrays(
            ids=ids.astype(np.int64),
            categorical=categorical,
            price=price,
            created_us=created_us,
            text=text,
            text_offsets=offsets,
        )

    def age_buckets(self, created_us: np.ndarray, as_of_us: np.ndarray | int | None) -> np.ndarray:
        """Log-day age bucket of each listing at `as_of_us` (one time, or one per row)."""
        buckets = np.zeros(len(created_us), dtype=np.int64)
        if as_of_us is None:
            return buckets
        as_of = np.broadcast_to(np.asarray(as_of_us, dtype=np.int64), created_us.shape)
        known = (created_us != NO_DATE) & (as_of != NO_DATE)
        age_days = np.maximum(as_of[known] - created_us[known], 0) / _US_PER_DAY
        buckets[known] = np.searchsorted(self.age_edges, age_days, side="right") + 1
        return buckets

    def _hashed_text(self, items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        columns = [
            items[column].astype("object").to_numpy()
            if column in items
            else np.full(len(items), None, dtype=object)
            for column in TEXT_COLUMNS
        ]
        parts = [
            _hashed_title(
                title if isinstance(title, str) else None,
                genres if isinstance(genres, str) else None,
                self.text_buckets,
            )
            for title, genres in zip(*columns, strict=True)
        ]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(part) for part in parts], out=offsets[1:])
        text = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return text.astype(np.int64), offsets

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict[str, Any]:
        """Everything but the id list (kept in a parquet file beside it)."""
        return {
            "vocabularies": {column: list(values) for column, values in self.vocabularies.items()},
            "price_edges": self.price_edges.tolist(),
            "age_edges": self.age_edges.tolist(),
            "text_buckets": self.text_buckets,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any], item_ids: list[str]) -> ItemFeaturizer:
        return cls(
            vocabularies={
                column: tuple(payload["vocabularies"].get(column, ()))
                for column in CATEGORICAL_COLUMNS
            },
            item_ids=tuple(item_ids),
            price_edges=np.asarray(payload["price_edges"], dtype=np.float64),
            age_edges=np.asarray(payload["age_edges"], dtype=np.float64),
            text_buckets=int(payload["text_buckets"]),
        )


def _epoch_us(values: pd.Series) -> np.ndarray:
    """int64 microseconds since the epoch of a tz-aware datetime series."""
    return ((values - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy(np.int64)


def timestamp_us(value: pd.Timestamp | None) -> int | None:
    """Microseconds since the epoch of one timestamp (None stays None)."""
    if value is None or pd.isna(value):
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int((stamp - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1))
