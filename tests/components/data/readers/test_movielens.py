"""The MovieLens 100K reader: a small folder in the real formats, plus the shared public
dataset when it is there."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from components.config import MovieLens100kSourceConfig
from components.data.readers.movielens import load_movielens_100k
from components.data.readers.parsing import SourceError
from components.data.schema import CanonicalTables
from tests.components.data.source_files import ML_100K, assert_canonical, write_ml_100k


@pytest.fixture(scope="module")
def ml_100k() -> CanonicalTables:
    if not ML_100K.is_dir():
        pytest.skip(f"MovieLens-100K not found at {ML_100K}")
    return load_movielens_100k(MovieLens100kSourceConfig(path=ML_100K))


@pytest.mark.needs_shared_data
@pytest.mark.skipif(not ML_100K.is_dir(), reason=f"MovieLens-100K not found at {ML_100K}")
def test_movielens_100k_real_folder(ml_100k: CanonicalTables) -> None:
    tables = ml_100k
    assert_canonical(tables)
    interactions = tables.interactions
    assert len(interactions) == 100_000
    assert interactions["user_id"].nunique() == 943
    assert interactions["item_id"].nunique() == 1_682
    assert len(tables.users) == 943 and len(tables.items) == 1_682
    assert set(interactions["event"].unique()) == {"rating"}
    assert set(interactions["weight"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert interactions["ts"].min() >= pd.Timestamp("1997-09-01", tz="UTC")
    assert interactions["ts"].max() < pd.Timestamp("1998-05-01", tz="UTC")
    assert interactions["ts"].notna().all()

    toy_story = tables.items.set_index("item_id").loc["1"]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["genres"] == "Animation|Children's|Comedy"
    assert toy_story["category"] == "Animation"
    assert toy_story["year"] == 1995
    assert tables.items["category"].notna().all()
    assert tables.items["year"].isna().sum() == 1  # item 267 has no release date
    assert tables.items[["created_at", "sold_at", "price", "seller_id"]].isna().all().all()

    users = tables.users.set_index("user_id")
    assert list(users.loc["1", ["age", "gender", "occupation", "zip"]]) == [
        24,
        "M",
        "technician",
        "85711",
    ]
    assert users["created_at"].isna().all() and users["country"].isna().all()
    assert tables.source == {"kind": "movielens_100k", "path": str(ML_100K.resolve())}


@pytest.mark.parametrize("with_genre_file", [True, False])
def test_movielens_100k_small_folder_genres_and_category(
    tmp_path: Path, with_genre_file: bool
) -> None:
    folder = write_ml_100k(tmp_path / "ml", with_genre_file=with_genre_file)
    tables = load_movielens_100k(MovieLens100kSourceConfig(path=folder))
    assert_canonical(tables)
    items = tables.items.set_index("item_id")
    assert items.loc["1", "category"] == "Animation"
    assert items.loc["2", "category"] == "Adventure"
    assert items.loc["2", "genres"] == "unknown|Adventure"
    assert items.loc["2", "title"] == "Amélie (2001)"  # Latin-1 decoded
    assert items.loc["2", "year"] == 2001
    assert pd.isna(items.loc["3", "category"]) and pd.isna(items.loc["3", "genres"])
    assert pd.isna(items.loc["3", "year"])
    assert tables.users.set_index("user_id").loc["2", "zip"] == "T8H1N"
    first = tables.interactions.iloc[0]
    assert first["ts"] == pd.Timestamp(881250949, unit="s", tz="UTC")
    assert first["weight"] == 5.0


def test_movielens_100k_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"does not exist.*source\.path"):
        load_movielens_100k(MovieLens100kSourceConfig(path=tmp_path / "nowhere"))
    folder = write_ml_100k(tmp_path / "ml")
    (folder / "u.user").unlink()
    with pytest.raises(SourceError, match=r"has no u\.user"):
        load_movielens_100k(MovieLens100kSourceConfig(path=folder))


def test_movielens_100k_wrong_layout(tmp_path: Path) -> None:
    folder = write_ml_100k(tmp_path / "ml")
    (folder / "u.data").write_text("1,1,5,881250949\n")
    with pytest.raises(SourceError, match=r"u\.data has 1 columns, expected 4"):
        load_movielens_100k(MovieLens100kSourceConfig(path=folder))
