import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from components.evaluation import beyond_accuracy as ba

# 3 users, 6 items; user 2 has an empty list.
RANKED = np.array([[0, 1, 2], [2, 3, -1], [-1, -1, -1]])
N_ITEMS = 6


def test_exposure_counts_slots_and_ignores_padding():
    np.testing.assert_allclose(ba.exposure_counts(RANKED, N_ITEMS), [1, 1, 2, 1, 0, 0])


def test_discounted_exposure_weights_rank_r_by_one_over_log2_r_plus_1():
    expected = [1.0, 1 / np.log2(3), 0.5 + 1.0, 1 / np.log2(3), 0, 0]
    np.testing.assert_allclose(ba.exposure_counts(RANKED, N_ITEMS, discount=True), expected)


def test_exposure_counts_rejects_items_outside_the_catalogue():
    with pytest.raises(ValueError, match="n_items"):
        ba.exposure_counts(RANKED, 3)


def test_coverage_counts_distinct_recommended_items():
    assert ba.catalog_coverage(RANKED, 8) == pytest.approx(4 / 8)
    with pytest.raises(ValueError, match="n_recommendable"):
        ba.catalog_coverage(RANKED, 0)


def test_novelty_is_mean_self_information_with_a_floor_of_one_count():
    popularity = np.array([8, 4, 2, 0, 1, 1])  # total 16; item 3 unseen -> floor 1 count
    # user 0: -log2(8/16), -log2(4/16), -log2(2/16) = 1, 2, 3; user 1: 3, -log2(1/16) = 4
    np.testing.assert_allclose(ba.novelty(RANKED, popularity), [2.0, 3.5, np.nan])


def test_novelty_rejects_an_empty_training_set():
    with pytest.raises(ValueError, match="sums to 0"):
        ba.novelty(RANKED, np.zeros(N_ITEMS))


def test_diversity_is_the_share_of_pairs_with_different_categories():
    categories = np.array([0, 0, 1, 1, 0, 1])
    # user 0: categories (0, 0, 1): 2 of 3 pairs differ; user 1: (1, 1): 0 of 1; user 2: none.
    np.testing.assert_allclose(ba.intra_list_diversity(RANKED, categories), [2 / 3, 0.0, np.nan])


def test_diversity_leaves_out_items_of_unknown_category():
    categories = np.array([0, -1, 1, -1, 0, 0])
    # user 0: known (0, 1) -> 1 pair, differs; user 1: one known item -> undefined.
    np.testing.assert_allclose(ba.intra_list_diversity(RANKED, categories), [1.0, np.nan, np.nan])


def test_diversity_matches_a_pairwise_loop():
    rng = np.random.default_rng(3)
    ranked = rng.integers(-1, 30, size=(40, 12))
    categories = rng.integers(-1, 5, size=30)
    expected = []
    for row in ranked:
        codes = [categories[i] for i in row if i >= 0 and categories[i] >= 0]
        pairs = [(x, y) for p, x in enumerate(codes) for y in codes[p + 1 :]]
        expected.append(np.mean([x != y for x, y in pairs]) if pairs else np.nan)
    np.testing.assert_allclose(ba.intra_list_diversity(ranked, categories), expected)


def test_gini_hand_computed():
    # G = sum_i sum_j |x_i - x_j| / (2 n^2 mean): [0, 0, 0, 1] -> 6 / (2 * 16 * 0.25) = 0.75
    assert ba.gini(np.array([0, 0, 0, 1])) == pytest.approx(0.75)
    assert ba.gini(np.array([3.0, 3.0, 3.0])) == pytest.approx(0.0)
    assert ba.gini(np.array([1, 2, 3, 4])) == pytest.approx(0.25)
    assert ba.gini(np.zeros(4)) == 0.0


def test_gini_rejects_negative_or_empty_values():
    with pytest.raises(ValueError, match="non-negative"):
        ba.gini(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="empty"):
        ba.gini(np.array([]))


@settings(max_examples=100, deadline=None)
@given(
    values=hnp.arrays(float, st.integers(1, 50), elements=st.floats(0, 1e6, allow_subnormal=False)),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 1000),
)
def test_gini_is_in_unit_interval_and_invariant_to_scale_and_order(values, scale, seed):
    value = ba.gini(values)
    assert 0.0 <= value < 1.0
    assert ba.gini(values * scale) == pytest.approx(value, abs=1e-9)
    permuted = np.random.default_rng(seed).permutation(values)
    assert ba.gini(permuted) == pytest.approx(value, abs=1e-9)
    n = values.size
    pairwise = np.abs(values[:, None] - values[None, :]).sum()
    if values.sum() > 0:
        assert value == pytest.approx(pairwise / (2 * n * n * values.mean()), abs=1e-9)


def test_lorenz_curve_runs_from_origin_to_one_one():
    entities, exposure = ba.lorenz_curve(np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(entities, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(exposure, [0, 0, 0, 0, 1.0])
    entities, exposure = ba.lorenz_curve(np.array([2.0, 2.0]))
    np.testing.assert_allclose(exposure, entities)


def test_seller_exposure_sums_items_and_drops_unknown_sellers():
    item_exposure = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    sellers = np.array([0, 2, 0, -1, 2])
    np.testing.assert_allclose(ba.seller_exposure(item_exposure, sellers), [4.0, 0.0, 7.0])
    assert ba.seller_exposure(item_exposure, sellers, n_sellers=5).shape == (5,)


def test_exposure_share_counts_filled_slots_of_flagged_items():
    flagged = np.array([False, False, True, True, False, False])
    # filled slots: 0, 1, 2, 2, 3 -> 3 of 5 flagged
    assert ba.exposure_share(RANKED, flagged) == pytest.approx(3 / 5)
    assert np.isnan(ba.exposure_share(np.full((2, 3), -1), flagged))


def test_small_seller_item_flags_count_listings_per_seller():
    sellers = np.array([0, 0, 0, 1, 2, 2, -1])
    np.testing.assert_array_equal(
        ba.small_seller_item_flags(sellers, max_listings=2),
        [False, False, False, True, True, True, False],
    )


def test_report_has_stable_keys_and_hand_computed_values():
    popularity = np.array([8, 4, 2, 0, 1, 1])
    report = ba.beyond_accuracy_report(
        RANKED,
        k=3,
        item_popularity=popularity,
        recommendable=np.array([True, True, True, True, True, False]),
        category_codes=np.array([0, 0, 1, 1, 0, 1]),
        seller_codes=np.array([0, 0, 1, 1, 2, -1]),
        new_item_flags=np.array([False, False, False, True, False, False]),
        small_seller_flags=np.array([False, False, True, True, True, False]),
    )
    assert list(report) == [
        "coverage@3",
        "novelty@3",
        "diversity@3",
        "gini_items@3",
        "gini_sellers@3",
        "new_item_exposure@3",
        "small_seller_exposure@3",
    ]
    assert report["coverage@3"] == pytest.approx(4 / 5)
    assert report["novelty@3"] == pytest.approx((2.0 + 3.5) / 2)  # the empty list is skipped
    assert report["diversity@3"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert report["gini_items@3"] == pytest.approx(ba.gini(np.array([1, 1, 2, 1, 0])))
    assert report["gini_sellers@3"] == pytest.approx(ba.gini(np.array([2, 3, 0])))
    assert report["new_item_exposure@3"] == pytest.approx(1 / 5)
    assert report["small_seller_exposure@3"] == pytest.approx(3 / 5)


def test_report_truncates_to_k_and_skips_missing_inputs():
    report = ba.beyond_accuracy_report(RANKED, k=1, item_popularity=np.ones(N_ITEMS))
    assert set(report) == {"coverage@1", "novelty@1", "gini_items@1"}
    assert report["coverage@1"] == pytest.approx(2 / 6)


@settings(max_examples=60, deadline=None)
@given(
    n_users=st.integers(1, 10),
    n_items=st.integers(1, 40),
    k=st.integers(1, 15),
    n_categories=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_per_user_metrics_stay_in_range(n_users, n_items, k, n_categories, seed):
    rng = np.random.default_rng(seed)
    ranked = rng.integers(-1, n_items, size=(n_users, k))
    categories = rng.integers(-1, n_categories, size=n_items)
    diversity = ba.intra_list_diversity(ranked, categories)
    defined = ~np.isnan(diversity)
    assert ((diversity[defined] >= 0) & (diversity[defined] <= 1)).all()
    novelty = ba.novelty(ranked, rng.integers(0, 5, size=n_items) + np.eye(1, n_items)[0])
    filled = (ranked >= 0).any(axis=1)
    assert (novelty[filled] >= 0).all() and np.isnan(novelty[~filled]).all()
    exposure = ba.exposure_counts(ranked, n_items)
    assert exposure.sum() == (ranked >= 0).sum()
    assert 0.0 <= ba.catalog_coverage(ranked, n_items) <= 1.0
