"""The Annoy index: round trip through its folder, recall against exact search, id map,
inner-product search by augmentation, deterministic and atomic builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import AnnoyConfig
from components.retrieval import ann_index
from components.retrieval.ann_index import (
    ITEMS_SCANNED_PER_NODE,
    AnnIndex,
    ann_recall,
    build_annoy_index,
    exact_top_k,
)


def clustered_vectors(
    n: int, dim: int, seed: int, centre_seed: int = 0, n_clusters: int = 20, noise: float = 1.0
) -> np.ndarray:
    """Unit vectors around random unit centres: some structure, as trained embeddings have."""
    centres = np.random.default_rng(centre_seed).standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, n_clusters, n)]
    points = points + noise * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def ids(n: int) -> list[str]:
    return [f"item{i:05d}" for i in range(n)]


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return clustered_vectors(3000, 32, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    """User vectors from the same clusters as the items."""
    return clustered_vectors(200, 32, seed=1)


def test_loaded_index_answers_exactly_like_the_index_before_saving(
    items: np.ndarray, queries: np.ndarray, tmp_path: Path
) -> None:
    built = AnnIndex.build(items, ids(len(items)), AnnoyConfig(n_trees=10))
    before = built.query(queries, k=20)
    built.save(tmp_path / "index")

    loaded = AnnIndex.load(tmp_path / "index")
    after = loaded.query(queries, k=20)

    np.testing.assert_array_equal(after.positions, before.positions)
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-6)
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [
        "index.ann",
        "index.json",
        "item_ids.parquet",
    ]
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    assert meta["count"] == len(items) and meta["dim"] == 32 and meta["n_trees"] == 10
    assert meta["metric"] == "angular" and meta["inner_product"] is False


def test_default_config_reaches_recall_095_against_exact_search(tmp_path: Path) -> None:
    # Loose clusters in 64 dimensions: Annoy's own search_k (n_trees * k) stays below .95.
    items = clustered_vectors(8000, 64, seed=0, n_clusters=50, noise=2.0)
    queries = clustered_vectors(200, 64, seed=1, n_clusters=50, noise=2.0)
    index = build_annoy_index(items, ids(len(items)), AnnoyConfig(), tmp_path / "index")

    recall = ann_recall(index, items, queries, k=100)
    annoy_default = ann_recall(index, items, queries, k=100, search_k=50 * 100)

    assert recall >= 0.95
    assert index.effective_search_k(100) == 4 * 50 * 100
    assert annoy_default < recall


def test_recall_is_one_when_the_search_inspects_every_node(
    items: np.ndarray, queries: np.ndarray
) -> None:
    index = AnnIndex.build(items, ids(len(items)), AnnoyConfig(n_trees=5, search_k=10**6))

    assert ann_recall(index, items, queries, k=50, sample=30) == 1.0


def test_id_map_aligns_annoy_positions_with_item_ids(tmp_path: Path) -> None:
    vectors = clustered_vectors(500, 8, seed=3)
    item_ids = [f"listing-{n}" for n in np.random.default_rng(3).permutation(500)]
    index = build_annoy_index(vectors, item_ids, AnnoyConfig(n_trees=5), tmp_path / "index")

    found = index.query(vectors[[7, 123, 499]], k=1)

    assert list(index.ids_at(found.positions)[:, 0]) == [item_ids[7], item_ids[123], item_ids[499]]
    np.testing.assert_allclose(found.scores[:, 0], 1.0, atol=1e-5)
    stored = pd.read_parquet(tmp_path / "index" / "item_ids.parquet")["item_id"]
    assert list(stored) == item_ids


def test_scores_are_cosine_similarities_best_first(items: np.ndarray) -> None:
    index = AnnIndex.build(items, ids(len(items)), AnnoyConfig(n_trees=5, search_k=10**6))
    query = 3.0 * items[:1] + 0.5  # not normalised: cosine does not care

    found = index.query(query, k=10)

    unit = query / np.linalg.norm(query)
    np.testing.assert_allclose(found.scores[0], items[found.positions[0]] @ unit[0], atol=1e-5)
    assert np.all(np.diff(found.scores[0]) <= 1e-7)


def test_inner_product_index_ranks_by_dot_product_not_by_angle() -> None:
    rng = np.random.default_rng(5)
    directions = clustered_vectors(400, 8, seed=5)
    vectors = directions * rng.uniform(0.1, 3.0, size=(400, 1)).astype(np.float32)
    queries = rng.standard_normal((20, 8)).astype(np.float32)
    config = AnnoyConfig(n_trees=10, search_k=10**6, inner_product=True)

    index = AnnIndex.build(vectors, ids(400), config)
    found = index.query(queries, k=10)

    dots = queries @ vectors.T
    expected = np.argsort(-dots, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(found.positions, expected)
    np.testing.assert_allclose(
        found.scores, np.take_along_axis(dots, expected, axis=1), rtol=1e-4, atol=1e-4
    )
    by_angle = AnnIndex.build(vectors, ids(400), config.model_copy(update={"inner_product": False}))
    assert not np.array_equal(by_angle.query(queries, k=10).positions, expected)
    assert index.index_dim == 9 and index.max_norm == pytest.approx(
        np.linalg.norm(vectors, axis=1).max()
    )


def test_inner_product_flag_and_norm_survive_the_round_trip(tmp_path: Path) -> None:
    vectors = np.random.default_rng(2).standard_normal((100, 6)).astype(np.float32)
    config = AnnoyConfig(n_trees=5, search_k=10**6, inner_product=True)
    built = AnnIndex.build(vectors, ids(100), config)
    before = built.query(vectors[:5], k=7)
    built.save(tmp_path / "ip")

    loaded = AnnIndex.load(tmp_path / "ip")

    assert loaded.inner_product and loaded.max_norm == pytest.approx(built.max_norm)
    np.testing.assert_array_equal(loaded.query(vectors[:5], k=7).positions, before.positions)


def test_builds_with_the_same_seed_are_identical(items: np.ndarray, queries: np.ndarray) -> None:
    config = AnnoyConfig(n_trees=5, search_k=200)
    first = AnnIndex.build(items, ids(len(items)), config).query(queries, k=30)
    second = AnnIndex.build(items, ids(len(items)), config).query(queries, k=30)

    np.testing.assert_array_equal(first.positions, second.positions)


def test_vectors_are_normalised_before_indexing(items: np.ndarray) -> None:
    scaled = items * np.linspace(0.5, 5.0, len(items), dtype=np.float32)[:, None]
    config = AnnoyConfig(n_trees=5, search_k=10**6)

    plain = AnnIndex.build(items, ids(len(items)), config).query(items[:10], k=5)
    rescaled = AnnIndex.build(scaled, ids(len(items)), config).query(items[:10], k=5)

    np.testing.assert_array_equal(plain.positions, rescaled.positions)
    np.testing.assert_allclose(plain.scores, rescaled.scores, atol=1e-5)


def test_failed_write_leaves_no_folder(
    items: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_write_json(path: Path, payload: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ann_index, "write_json", broken_write_json)

    with pytest.raises(OSError, match="disk full"):
        build_annoy_index(items, ids(len(items)), AnnoyConfig(n_trees=2), tmp_path / "index")

    assert list(tmp_path.iterdir()) == []


def test_failed_rebuild_keeps_the_previous_index(
    items: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_annoy_index(items[:100], ids(100), AnnoyConfig(n_trees=2), tmp_path / "index")

    def broken_write_json(path: Path, payload: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ann_index, "write_json", broken_write_json)
    with pytest.raises(OSError):
        build_annoy_index(items, ids(len(items)), AnnoyConfig(n_trees=2), tmp_path / "index")

    assert AnnIndex.load(tmp_path / "index").count == 100
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_short_results_and_directionless_queries_are_padded() -> None:
    vectors = clustered_vectors(5, 4, seed=1)
    index = AnnIndex.build(vectors, ids(5), AnnoyConfig(n_trees=3))
    queries = np.vstack([vectors[:1], np.zeros((1, 4)), np.full((1, 4), np.nan)])

    found = index.query(queries, k=8)

    assert found.positions.shape == (3, 8)
    assert sorted(found.positions[0, :5]) == [0, 1, 2, 3, 4]
    assert np.all(found.positions[0, 5:] == -1) and np.all(found.positions[1:] == -1)
    assert np.all(np.isneginf(found.scores[0, 5:])) and np.all(np.isneginf(found.scores[1:]))
    assert list(index.ids_at(found.positions)[0, 5:]) == [None, None, None]


def test_exact_top_k_orders_by_cosine(items: np.ndarray) -> None:
    index = AnnIndex.build(items[:50], ids(50), AnnoyConfig(n_trees=2))

    top = exact_top_k(index, items[:50], items[:3], k=4)

    assert list(top[:, 0]) == [0, 1, 2]


@pytest.mark.parametrize(
    ("vectors", "item_ids", "message"),
    [
        (np.ones((3, 4)), ["a", "b"], "one id per row"),
        (np.ones((2, 4)), ["a", "a"], "unique"),
        (np.vstack([np.ones(4), np.zeros(4)]), ["a", "b"], "zero"),
        (np.vstack([np.ones(4), np.full(4, np.nan)]), ["a", "b"], "NaN"),
        (np.ones(4), ["a"], "2-d"),
    ],
)
def test_bad_inputs_are_refused_with_the_reason(
    vectors: np.ndarray, item_ids: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        AnnIndex.build(vectors, item_ids, AnnoyConfig(n_trees=1))


def test_query_of_the_wrong_dimension_is_refused(items: np.ndarray) -> None:
    index = AnnIndex.build(items[:20], ids(20), AnnoyConfig(n_trees=1))

    with pytest.raises(ValueError, match=r"\(n_queries, 32\)"):
        index.query(np.ones((1, 31)), k=3)


def test_loading_a_folder_without_an_index_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="build_annoy_index"):
        AnnIndex.load(tmp_path)


def test_recall_needs_the_vectors_that_were_indexed(items: np.ndarray) -> None:
    index = AnnIndex.build(items[:20], ids(20), AnnoyConfig(n_trees=1))

    with pytest.raises(ValueError, match="in index order"):
        ann_recall(index, items[:21], items[:3], k=5)


@pytest.mark.parametrize("inner_product", [False, True])
def test_scan_is_exact_search_under_the_index_metric(
    items: np.ndarray, queries: np.ndarray, inner_product: bool
) -> None:
    scaled = items * np.random.default_rng(3).uniform(0.2, 1.0, (len(items), 1))
    vectors = scaled.astype(np.float32) if inner_product else items
    index = AnnIndex.build(
        vectors, ids(len(items)), AnnoyConfig(n_trees=5, inner_product=inner_product)
    )

    found = index.scan(queries, k=25)

    np.testing.assert_array_equal(found.positions, exact_top_k(index, vectors, queries, 25))
    if inner_product:
        expected = queries @ vectors.T
    else:
        expected = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ vectors.T
    np.testing.assert_allclose(
        found.scores, np.take_along_axis(expected, found.positions, axis=1), atol=1e-5
    )
    annoy = index.query(queries, k=25)  # the same scale: cosine, or the inner product
    same = annoy.positions[:, 0] == found.positions[:, 0]
    assert same.mean() > 0.5
    np.testing.assert_allclose(annoy.scores[same, 0], found.scores[same, 0], atol=1e-3)


def test_a_query_scanned_alone_gets_exactly_what_it_gets_in_a_batch(
    items: np.ndarray, queries: np.ndarray
) -> None:
    """A served request scans one user, an evaluation batch hundreds: the scores must be
    the same bits, or a ranker split on them answers differently online and offline."""
    index = AnnIndex.build(items, ids(len(items)), AnnoyConfig(n_trees=5))

    batch = index.scan(queries, k=50)
    for row in range(len(queries)):
        alone = index.scan(queries[row : row + 1], k=50)
        np.testing.assert_array_equal(alone.positions[0], batch.positions[row])
        np.testing.assert_array_equal(alone.scores[0], batch.scores[row])


def test_search_scans_only_when_the_scan_costs_no_more_than_annoys_nodes(
    items: np.ndarray, queries: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = AnnIndex.build(items, ids(len(items)), AnnoyConfig(n_trees=10, search_k_factor=3.0))
    assert ITEMS_SCANNED_PER_NODE == 5
    # 3 x 10 x k nodes per query, 5 scanned items each, against 3,000 items: scan from k = 20.
    assert not index.scan_is_cheaper(19) and index.scan_is_cheaper(20)
    assert index.scan_is_cheaper(np.array([10, 30]))  # 5 x (300 + 900) nodes >= 6,000
    assert not index.scan_is_cheaper(np.array([10, 29]))
    used: list[str] = []
    monkeypatch.setattr(AnnIndex, "scan", lambda self, v, k: used.append("scan"))
    monkeypatch.setattr(AnnIndex, "query", lambda self, v, k: used.append("query"))

    index.search(queries, 120)
    index.search(queries, 5)

    assert used == ["scan", "query"]


@pytest.mark.parametrize("how", ["query", "scan"])
def test_each_row_gets_its_own_depth(items: np.ndarray, queries: np.ndarray, how: str) -> None:
    index = AnnIndex.build(items, ids(len(items)), AnnoyConfig(n_trees=10))
    depths = np.array([3, 10, 1])

    found = getattr(index, how)(queries[:3], depths)
    alone = [getattr(index, how)(queries[row : row + 1], int(d)) for row, d in enumerate(depths)]

    assert found.positions.shape == (3, 10)
    for row, depth in enumerate(depths):
        np.testing.assert_array_equal(found.positions[row, :depth], alone[row].positions[0])
        assert np.all(found.positions[row, depth:] == -1)
        assert np.all(np.isneginf(found.scores[row, depth:]))


def test_scan_pads_directionless_queries_and_small_catalogues() -> None:
    vectors = clustered_vectors(5, 4, seed=1)
    index = AnnIndex.build(vectors, ids(5), AnnoyConfig(n_trees=3))
    queries = np.vstack([vectors[:1], np.zeros((1, 4)), np.full((1, 4), np.nan)])

    found = index.scan(queries, k=8)

    assert found.positions.shape == (3, 8) and found.positions[0, 0] == 0
    assert sorted(found.positions[0, :5]) == [0, 1, 2, 3, 4]
    assert np.all(found.positions[0, 5:] == -1) and np.all(found.positions[1:] == -1)


def test_an_empty_index_finds_nothing_either_way() -> None:
    index = AnnIndex.build(np.zeros((0, 4), dtype=np.float32), [], AnnoyConfig(n_trees=2))

    for found in (index.search(np.ones((2, 4)), 3), index.query(np.ones((2, 4)), 3)):
        assert found.positions.shape == (2, 3) and np.all(found.positions == -1)
