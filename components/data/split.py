"""Train / valid / test splits: temporal global cut-offs, or a fixed split given by the source.

Temporal (docs/evaluation.md): train < T_valid <= valid < T_test <= test. A model evaluated on a
stage sees only the interactions before that stage's cut-off, and may only recommend
listings available at the cut-off (created, not yet sold).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from components.config import SplitConfig
from components.data.schema import SPLIT_COLUMN, CanonicalTables
from components.data.snapshot import read_tables, write_tables
from components.store import atomic_directory, read_json, write_json

Stage = Literal["valid", "test"]
STAGES: tuple[Stage, ...] = ("valid", "test")
SPLIT_MANIFEST = "split.json"


class SplitError(ValueError):
    """The data cannot be split as configured; the message says how to change the config."""


@dataclass(frozen=True)
class DataSplit:
    protocol: Literal["temporal", "fixed"]
    tables: CanonicalTables
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    valid_cutoff: pd.Timestamp | None = None
    test_cutoff: pd.Timestamp | None = None

    def cutoff(self, stage: Stage) -> pd.Timestamp | None:
        return self.valid_cutoff if stage == "valid" else self.test_cutoff

    def window(self, stage: Stage) -> pd.DataFrame:
        """The interactions to predict at this stage."""
        return self.valid if stage == "valid" else self.test

    def history(self, stage: Stage) -> pd.DataFrame:
        """What a model evaluated on `stage` may learn from.

        Temporal: everything before the stage's cut-off. Fixed: the train file only, as in
        the published protocol of the fixed benchmark splits.
        """
        if stage == "valid" or self.protocol == "fixed":
            return self.train
        return pd.concat([self.train, self.valid], ignore_index=True)

    def all_interactions(self) -> pd.DataFrame:
        return pd.concat([self.train, self.valid, self.test], ignore_index=True)

    def serving_history(self) -> pd.DataFrame:
        """What the registered model is refitted on: everything for the temporal protocol
        (the future is unseen anyway); train + valid for a fixed split, whose test file
        must stay unseen so the published protocol can score the registered model."""
        if self.protocol == "fixed":
            return pd.concat([self.train, self.valid], ignore_index=True)
        return self.all_interactions()

    def with_test_cutoff(self, cutoff: pd.Timestamp) -> DataSplit:
        """The same data with a later test cut-off: the window both an older model and
        a newer one have never seen (temporal protocol only)."""
        if self.protocol != "temporal" or self.test_cutoff is None or cutoff < self.test_cutoff:
            raise SplitError("with_test_cutoff moves a temporal test cut-off later, never earlier")
        interactions = self.all_interactions()
        ts = interactions["ts"]
        return DataSplit(
            protocol="temporal",
            tables=self.tables,
            train=self.train,
            valid=interactions[(ts >= self.valid_cutoff) & (ts < cutoff)].reset_index(drop=True),
            test=interactions[ts >= cutoff].reset_index(drop=True),
            valid_cutoff=self.valid_cutoff,
            test_cutoff=cutoff,
        )

    def windows_back(self, back: int) -> DataSplit:
        """A split for tuning without the test window: its test window is the `back`-th
        window of the valid window's length before this split's test window (1: the valid
        window itself), the window before that is its valid window, and nothing at or
        after the end of its test window is kept.

        A fixed split has one such window, its valid file: the test file is dropped and the
        valid file scored in its place, against models fitted on the train file as before.
        """
        if back < 1:
            raise SplitError(f"windows_back counts windows from 1, got {back}")
        if self.protocol == "fixed":
            if back != 1:
                raise SplitError(
                    f"a fixed split has one window before its test file (valid), not {back}"
                )
            kept = pd.concat([self.train, self.valid], ignore_index=True)
            return DataSplit(
                protocol="fixed",
                tables=self.tables.replace(interactions=kept),
                train=self.train,
                valid=self.valid,
                test=self.valid,
            )
        if self.valid_cutoff is None or self.test_cutoff is None:
            raise SplitError("windows_back needs a split with valid and test cut-offs")
        length = self.test_cutoff - self.valid_cutoff
        end = self.test_cutoff - (back - 1) * length
        test_cutoff, valid_cutoff = end - length, end - 2 * length
        seen = self.history("test")
        kept = seen[seen["ts"] < end].reset_index(drop=True)
        ts = kept["ts"]
        train = kept[ts < valid_cutoff].reset_index(drop=True)
        if train.empty:
            raise SplitError(f"no interaction before {valid_cutoff}: go back fewer windows")
        return DataSplit(
            protocol="temporal",
            tables=self.tables.replace(interactions=kept),
            train=train,
            valid=kept[(ts >= valid_cutoff) & (ts < test_cutoff)].reset_index(drop=True),
            test=kept[ts >= test_cutoff].reset_index(drop=True),
            valid_cutoff=valid_cutoff,
            test_cutoff=test_cutoff,
        )

    def available_items(self, at: pd.Timestamp | None) -> pd.Series:
        """Boolean per row of `tables.items`: listed and not yet sold at `at` (None: all)."""
        return available_at(self.tables.items, at)

    def summary(self) -> dict[str, object]:
        return {
            "protocol": self.protocol,
            "valid_cutoff": None if self.valid_cutoff is None else self.valid_cutoff.isoformat(),
            "test_cutoff": None if self.test_cutoff is None else self.test_cutoff.isoformat(),
            "rows": {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)},
            "users": {
                "train": int(self.train["user_id"].nunique()),
                "valid": int(self.valid["user_id"].nunique()),
                "test": int(self.test["user_id"].nunique()),
            },
        }


def available_at(items: pd.DataFrame, at: pd.Timestamp | None) -> pd.Series:
    """Listings created at or before `at` and unsold at `at`; unknown dates count as open."""
    if at is None:
        return pd.Series(True, index=items.index)
    created = items["created_at"]
    sold = items["sold_at"]
    listed = created.isna() | (created <= at)
    unsold = sold.isna() | (sold > at)
    return (listed & unsold).fillna(False).astype(bool)


def latest_moment(interactions: pd.DataFrame, items: pd.DataFrame) -> pd.Timestamp | None:
    """The data's 'now': the last known timestamp (None when the data has no time)."""
    candidates = [interactions["ts"].max(), items["created_at"].max(), items["sold_at"].max()]
    known = [value for value in candidates if pd.notna(value)]
    return max(known) if known else None


def split_tables(tables: CanonicalTables, config: SplitConfig) -> DataSplit:
    if config.protocol == "fixed":
        return _fixed_split(tables)
    return _temporal_split(tables, config)


def _fixed_split(tables: CanonicalTables) -> DataSplit:
    if not tables.has_fixed_split:
        raise SplitError(
            "split.protocol is 'fixed' but the source gives no train/valid/test split; "
            "use split.protocol: temporal, or a fixed_split source"
        )
    interactions = tables.interactions
    parts = {
        name: interactions[interactions[SPLIT_COLUMN] == name].reset_index(drop=True)
        for name in ("train", "valid", "test")
    }
    if parts["train"].empty or parts["test"].empty:
        raise SplitError("the fixed split needs non-empty train and test files")
    return DataSplit(protocol="fixed", tables=tables, **parts)


def _temporal_split(tables: CanonicalTables, config: SplitConfig) -> DataSplit:
    interactions = tables.interactions
    if tables.has_fixed_split or interactions["ts"].isna().all():
        raise SplitError(
            "split.protocol is 'temporal' but the interactions have no timestamps; "
            "use split.protocol: fixed for a fixed-split source"
        )
    start, end = interactions["ts"].min(), interactions["ts"].max()
    if config.by_fraction:
        span = end - start
        test_cutoff = end - span * config.test_fraction
        valid_cutoff = test_cutoff - span * config.valid_fraction
    else:
        test_cutoff = end - pd.Timedelta(config.test_duration)
        valid_cutoff = test_cutoff - pd.Timedelta(config.valid_duration)
    ts = interactions["ts"]
    train = interactions[ts < valid_cutoff].reset_index(drop=True)
    valid = interactions[(ts >= valid_cutoff) & (ts < test_cutoff)].reset_index(drop=True)
    test = interactions[ts >= test_cutoff].reset_index(drop=True)
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        if part.empty:
            raise SplitError(
                f"the temporal split leaves the {name} window empty (data spans {start} to "
                f"{end}, cut-offs {valid_cutoff} and {test_cutoff}); shorten "
                "split.valid_duration / split.test_duration or use fractions"
            )
    return DataSplit(
        protocol="temporal",
        tables=tables,
        train=train,
        valid=valid,
        test=test,
        valid_cutoff=valid_cutoff,
        test_cutoff=test_cutoff,
    )


def write_split(split: DataSplit, target: Path) -> dict[str, object]:
    """Persist a split atomically: the tables, each window, and the cut-offs."""
    with atomic_directory(target, overwrite=True) as staging:
        write_tables(split.tables, staging)
        for name in ("train", "valid", "test"):
            getattr(split, name).to_parquet(staging / f"{name}.parquet", index=False)
        summary = split.summary()
        write_json(staging / SPLIT_MANIFEST, summary)
    return summary


def read_split(folder: Path) -> DataSplit:
    folder = Path(folder)
    summary = read_json(folder / SPLIT_MANIFEST)
    tables = read_tables(folder)
    windows = {
        name: _canonical_window(pd.read_parquet(folder / f"{name}.parquet"), tables)
        for name in ("train", "valid", "test")
    }
    return DataSplit(
        protocol=summary["protocol"],
        tables=tables,
        valid_cutoff=_timestamp(summary["valid_cutoff"]),
        test_cutoff=_timestamp(summary["test_cutoff"]),
        **windows,
    )


def _canonical_window(frame: pd.DataFrame, tables: CanonicalTables) -> pd.DataFrame:
    return frame.astype(tables.interactions.dtypes.to_dict())


def _timestamp(value: str | None) -> pd.Timestamp | None:
    return None if value is None else pd.Timestamp(value)
