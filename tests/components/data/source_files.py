"""Small source files in the real formats, written to tmp_path, the shared public datasets' paths,
and the check that a reader's tables are in canonical form: what the reader tests and the
`load_source` dispatch test share."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from components.config import InteractionsFileSourceConfig
from components.data.schema import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    TIMESTAMP_DTYPE,
    USER_COLUMNS,
    CanonicalTables,
)

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
ML_100K = SHARED_DATA / "ml-100k"
ML_1M_LCFN = SHARED_DATA / "ml-1m-lcfn"

#: The same three instants written as epoch seconds, epoch milliseconds and ISO-8601.
INSTANTS = pd.to_datetime(
    ["2024-03-01T08:00:00Z", "2024-03-01T09:30:15Z", "2024-03-02T23:59:59Z"], utc=True
)
EPOCH_S = [int(t.timestamp()) for t in INSTANTS]
TS_FORMATS = {
    "s": EPOCH_S,
    "ms": [s * 1000 for s in EPOCH_S],
    "iso": ["2024-03-01T08:00:00Z", "2024-03-01 11:30:15+02:00", "2024-03-02T23:59:59"],
}


def assert_canonical(tables: CanonicalTables) -> None:
    assert tuple(tables.interactions.columns[:5]) == INTERACTION_COLUMNS
    assert tuple(tables.items.columns[: len(ITEM_COLUMNS)]) == ITEM_COLUMNS
    assert tuple(tables.users.columns[: len(USER_COLUMNS)]) == USER_COLUMNS
    assert str(tables.interactions["ts"].dtype) == TIMESTAMP_DTYPE
    assert tables.interactions["weight"].dtype == "float64"
    for frame, column in (
        (tables.interactions, "user_id"),
        (tables.interactions, "item_id"),
        (tables.items, "item_id"),
        (tables.users, "user_id"),
    ):
        assert frame[column].dtype == "string", column


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def interactions_config(path: Path, **overrides: object) -> InteractionsFileSourceConfig:
    """Built the way a pipeline YAML would give it, to exercise the real config model."""
    raw = {
        "kind": "interactions_file",
        "interactions": str(path),
        "columns": {"user_id": "uid", "item_id": "iid", "ts": "time"},
        **overrides,
    }
    return InteractionsFileSourceConfig.model_validate(yaml.safe_load(yaml.safe_dump(raw)))


def small_events(ts: list[object]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "uid": ["u1", "u2", "u1"],
            "iid": ["007", "i2", "i3"],
            "time": ts,
            "action": ["view", "purchase", "like"],
            "device": ["ios", "web", "ios"],
        }
    )


def write_ml_100k(folder: Path, *, with_genre_file: bool = True) -> Path:
    """A three-movie MovieLens-100K folder in the real formats (Latin-1, pipes, tabs)."""
    folder.mkdir()
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy"]
    genres += [f"G{i}" for i in range(13)]
    if with_genre_file:
        (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)))
    flags = {
        "1": [0, 0, 0, 1, 1, 1],  # Animation first among its genres
        "2": [1, 0, 1],  # "unknown" loses to a real genre
        "3": [0],  # no genre at all
    }
    lines = []
    for item_id, head in flags.items():
        row = [*head, *[0] * (19 - len(head))]
        title = {"1": "Toy Story (1995)", "2": "Amélie (2001)", "3": "Untitled"}[item_id]
        date = {"1": "01-Jan-1995", "2": "25-Apr-2001", "3": ""}[item_id]
        lines.append("|".join([item_id, title, date, "", "http://x", *map(str, row)]))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
    (folder / "u.data").write_text("1\t1\t5\t881250949\n2\t2\t3\t891717742\n1\t3\t1\t878887116\n")
    return folder


def write_fixed_split(folder: Path, *, valid: str | None = "3 4\n") -> Path:
    folder.mkdir()
    (folder / "train.txt").write_text("0 1 2 3\n1 2\n2\n\n3 0 0 4\n")
    if valid is not None:
        (folder / "valid.txt").write_text(valid)
    (folder / "test.txt").write_text("0 4\n1 5 6\n")
    return folder
