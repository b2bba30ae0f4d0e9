"""Known users' ranked lists in the bundle: a request answered from them gets exactly what
the two-stage ranker answers live, whatever it excludes and whatever its k."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from components.config import PipelineConfig, RankedListsConfig
from components.pipeline import chain, publish_steps
from components.serving.bundle import BundleError, verify_bundle
from components.serving.list_writer import most_recent_first, write_ranked_lists
from components.serving.ranked_lists import RANKED_LISTS_DIR, RankedLists
from components.serving.recommender import BundleRecommender
from components.settings import RewearSettings

DEPTH = 30


def small_config(**serving: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "lists-test",
            "source": {"kind": "synthetic", "n_users": 300, "n_days": 28},
            "split": {"valid_duration": "5D", "test_duration": "5D"},
            "model": {
                "candidates": {
                    "sources": ["covisitation", "popularity", "category_popularity"],
                    "per_source": 40,
                    "n": 60,
                },
                "ranker": {
                    "max_rounds": 40,
                    "min_data_in_leaf": 20,
                    "max_negatives": 30,
                    "num_threads": 1,
                },
            },
            "evaluation": {"ks": [10, 20], "bootstrap_resamples": 50},
            "serving": {"ranked_lists": {"depth": DEPTH, **serving}},
        }
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle a retrain registers for a small market (no encoder, to stay quick)."""
    config = small_config()
    root = tmp_path_factory.mktemp("lists")
    settings = RewearSettings(home=root / "home").ensure()
    run_dir = root / "run"
    stages = chain.Stages()
    data = chain.data_phase(config, run_dir, settings.snapshots, stages)
    retrieval = chain.retrieval_phase(config, data.split_uri, run_dir, stages)
    ranking = chain.ranking_phase(config, data.split_uri, retrieval, run_dir, stages)
    built = publish_steps.bundle(
        data.split_uri,
        retrieval.fitted["final_model_uri"],
        config,
        run_dir,
        two_stage_uri=ranking.served["uri"],
    )
    return Path(built["uri"])


@pytest.fixture(scope="module")
def served(bundle: Path) -> BundleRecommender:
    return BundleRecommender.load(bundle)


@pytest.fixture(scope="module")
def live(bundle: Path) -> BundleRecommender:
    """The same bundle with every request ranked live."""
    recommender = BundleRecommender.load(bundle)
    recommender.ranked_lists = None
    return recommender


def test_the_bundle_carries_sealed_lists_of_every_user_the_ranker_knows(
    bundle: Path, served: BundleRecommender
) -> None:
    files = verify_bundle(bundle)["files"]
    assert f"{RANKED_LISTS_DIR}/rows.npy" in files
    lists = served.ranked_lists
    assert lists is not None and lists.depth == DEPTH
    assert set(lists.user_rows) == set(served.two_stage.features.users.index.astype(str))
    # Only what the bundle may serve: available listings, never a user's masked ones.
    for user, at in list(lists.user_rows.items())[:100]:
        rows = lists.rows[at][lists.rows[at] >= 0]
        assert served.available[rows].all()
        assert not np.isin(rows, served.exclusions.get(user, [])).any()


def test_answers_from_the_lists_are_the_rankers_live_answers(
    served: BundleRecommender, live: BundleRecommender
) -> None:
    rng = random.Random(0)
    users = sorted(served.ranked_lists.user_rows)
    on_sale = [str(item) for item in served.item_ids[served.available]]
    for n, user in enumerate(users):
        k = (1, 10, 20, DEPTH)[n % 4]
        excluded = rng.sample(on_sale, 5) if n % 2 else []
        if n % 3 == 0:  # some of the user's own answers, as a caller hiding seen items
            excluded += live.recommend([user], k=k)["item_id"].tolist()[: k // 2]
        expected = live.recommend([user], k=k, exclude_item_ids=excluded)
        answer = served.recommend([user], k=k, exclude_item_ids=excluded)
        assert answer.equals(expected), (user, k, excluded)


def test_what_the_lists_cannot_say_is_ranked_live(
    served: BundleRecommender, live: BundleRecommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """k above the depth, or exclusions leaving fewer than k of a full list."""
    user = sorted(served.ranked_lists.user_rows)[0]
    ranked_live = []
    original = served.two_stage.ranked
    monkeypatch.setattr(
        served.two_stage,
        "ranked",
        lambda users, k=None: ranked_live.append(list(users)) or original(users, k),
    )
    own = live.recommend([user], k=DEPTH)["item_id"].tolist()

    served.recommend([user], k=DEPTH)
    assert ranked_live == []
    for k, excluded in ((DEPTH + 1, []), (10, own[: DEPTH - 5])):
        answer = served.recommend([user], k=k, exclude_item_ids=excluded)
        assert answer.equals(live.recommend([user], k=k, exclude_item_ids=excluded))
    assert ranked_live == [[user], [user]]


def without_lists(bundle: Path, folder: Path) -> Path:
    """A bundle folder linking to `bundle`'s files but its lists (unsealed, as a writer's)."""
    folder.mkdir()
    for path in bundle.iterdir():
        if path.name != RANKED_LISTS_DIR:
            (folder / path.name).symlink_to(path)
    return folder


def test_lists_go_to_the_most_recently_active_users_up_to_max_users(
    bundle: Path, tmp_path: Path
) -> None:
    copy = without_lists(bundle, tmp_path / "bundle")

    written = write_ranked_lists(copy, RankedListsConfig(depth=5, max_users=40))

    loaded = BundleRecommender.load(copy, checked=False)
    idle = loaded.two_stage.features.users["u_days_since_last"]
    chosen = most_recent_first(loaded)[:40]
    assert written is not None and written["users"] == 40
    assert written["known_users"] == len(loaded.two_stage.features.users) > 40
    assert idle.loc[chosen].max() <= idle.drop(index=chosen).min()
    lists = RankedLists.load(copy / RANKED_LISTS_DIR)
    assert sorted(lists.user_rows) == sorted(chosen) and lists.depth == 5


def test_a_damaged_list_file_is_refused_naming_it(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    path = copy / RANKED_LISTS_DIR / "rows.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(BundleError, match=r"ranked_lists/rows\.npy"):
        BundleRecommender.load(copy)


def test_lists_can_be_turned_off(bundle: Path, tmp_path: Path) -> None:
    copy = without_lists(bundle, tmp_path / "bundle")

    assert write_ranked_lists(copy, RankedListsConfig(enabled=False)) is None
    assert not (copy / RANKED_LISTS_DIR).exists()


def test_the_same_bundle_writes_the_same_list_bytes(bundle: Path, tmp_path: Path) -> None:
    """A resumed run's bundle must be the uninterrupted run's, byte for byte."""
    written = []
    for name in ("first", "second"):
        copy = without_lists(bundle, tmp_path / name)
        write_ranked_lists(copy, RankedListsConfig(depth=10, max_users=60))
        folder = copy / RANKED_LISTS_DIR
        written.append({path.name: path.read_bytes() for path in sorted(folder.iterdir())})

    assert written[0] == written[1]
