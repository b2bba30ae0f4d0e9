"""Two-tower encoder: towers, pooling, loss, training determinism, persistence, leakage.

On the toy marketplace of tests/components/conftest.py (shoe people and bag people): a
model that learns anything puts a user's own kind first, even for listings it has never
seen.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import EvaluationConfig
from components.evaluation.cold_start import cold_start_task
from components.evaluation.encoder_validation import encoder_validation
from components.evaluation.protocol import build_evaluation_task, evaluate_scorer
from components.retrieval.item_features import (
    UNKNOWN,
    ItemFeaturizer,
    hash_tokens,
    title_tokens,
)
from components.retrieval.two_tower import EpochScorers, TrainedTwoTower, TwoTowerScorer
from components.retrieval.two_tower_network import (
    ItemBatch,
    TwoTowerModel,
    pooling_weights,
    sampled_softmax_loss,
)
from components.retrieval.two_tower_training import train_two_tower, train_two_tower_stages
from components.retrieval.two_tower_training.batches import _epoch_batches, _user_run_order
from components.retrieval.two_tower_training.data import _build_training_data, _training_bags
from components.retrieval.two_tower_training.optimiser import (
    _adam,
    _extended_featurizer,
    _load_warm_start,
    _WarmStart,
)
from tests.components.conftest import TOY_KINDS, TOY_START, TOY_TWO_TOWER


@pytest.fixture(scope="module")
def trained(toy_two_tower: TrainedTwoTower) -> TrainedTwoTower:
    """The toy two-tower (tests/components/conftest.py), trained once per session."""
    return toy_two_tower


# ------------------------------------------------------------------------- item tower


def test_title_hashing_is_stable_and_has_words_bigrams_and_trigrams():
    tokens = title_tokens("Nike Air max", "Action|Drama")
    assert {"w:nike", "b:nike air", "c:<ni", "c:ax>", "g:drama"} <= set(tokens)
    hashed = hash_tokens(tokens, 512)
    assert hashed.min() >= 1 and hashed.max() < 512  # 0 is left free
    # zlib.crc32, not the per-process salted hash(): the same bucket everywhere, forever.
    assert hash_tokens(["w:nike"], 512).tolist() == [499]
    assert hash_tokens(["w:nike"], 2**16).tolist() == [55092]


def test_featurizer_reserves_index_zero_for_null_and_unseen_values():
    items = pd.DataFrame(
        {"item_id": ["a", "b"], "brand": ["Nike", None], "price": [10.0, 30.0], "title": ["x", "y"]}
    )
    featurizer = ItemFeaturizer.fit(items, price_buckets=4, age_buckets=6, text_buckets=64)
    new = pd.DataFrame(
        {"item_id": ["a", "zzz"], "brand": ["Nike", "Unseen"], "price": [10.0, None]}
    )
    arrays = featurizer.transform(new)
    brand = list(featurizer.vocabularies).index("brand")
    assert arrays.categorical[:, brand].tolist() == [1, UNKNOWN]
    assert arrays.ids.tolist() == [1, UNKNOWN]
    assert arrays.price[1] == UNKNOWN and arrays.price[0] > 0


def test_age_buckets_grow_with_age_and_new_listings_count_as_brand_new():
    featurizer = ItemFeaturizer.fit(
        pd.DataFrame({"item_id": ["a"]}), price_buckets=4, age_buckets=12, text_buckets=64
    )
    day = 86_400_000_000
    created = np.array([0, 0, 0, 5 * day], dtype=np.int64)
    buckets = featurizer.age_buckets(created, 2 * day)
    assert buckets[0] >= 1 and buckets[3] == 1  # created after as_of: brand new
    assert featurizer.age_buckets(created, None).tolist() == [0, 0, 0, 0]
    ages = featurizer.age_buckets(np.zeros(3, dtype=np.int64), np.array([1, 3, 90]) * day)
    assert ages[0] < ages[1] < ages[2]


def test_item_embeddings_are_unit_vectors_and_new_listings_embed_from_attributes(
    trained, toy_split
):
    items = toy_split.tables.items
    as_of = toy_split.test_cutoff
    vectors = trained.embed_items(items, as_of)
    assert vectors.shape == (len(items), TOY_TWO_TOWER.embedding_dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # A brand-new listing (unknown id) gets a real, attribute-driven vector...
    new = items[items["item_id"] == "shoe_new"]
    assert trained.featurizer.transform(new).ids[0] == UNKNOWN
    as_bag = new.assign(**TOY_KINDS["bag"])
    shoe_vector, bag_vector = trained.embed_items(pd.concat([new, as_bag]), as_of)
    assert np.isfinite(shoe_vector).all() and np.abs(shoe_vector).sum() > 0
    assert not np.allclose(shoe_vector, bag_vector)
    # ...and a known listing's id embedding counts at evaluation (no dropout there).
    known = items[items["item_id"] == "shoe03"]
    anonymous = known.assign(item_id="never-seen")
    with_id, without_id = trained.embed_items(pd.concat([known, anonymous]), as_of)
    assert not np.allclose(with_id, without_id)
    np.testing.assert_array_equal(
        trained.embed_items(known, as_of), trained.embed_items(known, as_of)
    )


# ------------------------------------------------------------------------- user tower


def test_pooling_weights_follow_event_type_and_recency_by_hand():
    week = 7 * 86_400.0
    # Bag 1: a view now (0.5) and a purchase one half-life ago (2.0 * 0.5 = 1.0).
    # Bag 2: empty. Bag 3: a like two half-lives ago, alone -> 1.
    weights = pooling_weights(
        event_weights=np.array([0.5, 2.0, 1.0]),
        age_seconds=np.array([0.0, week, 2 * week]),
        half_life_seconds=week,
        bag_offsets=np.array([0, 2, 2, 3]),
    )
    np.testing.assert_allclose(weights, [0.5 / 1.5, 1.0 / 1.5, 1.0], rtol=1e-6)
    no_decay = pooling_weights(np.array([0.5, 2.0]), None, None, np.array([0, 2]))
    np.testing.assert_allclose(no_decay, [0.2, 0.8], rtol=1e-6)


def test_user_history_pools_the_last_interactions_before_as_of_only(trained, toy_split):
    history = toy_split.history("test")
    as_of = toy_split.test_cutoff
    late = pd.DataFrame(
        {
            "user_id": ["u00", "u00"],
            "item_id": ["bag05", "bag06"],
            "ts": [as_of, as_of + pd.Timedelta(hours=1)],
            "event": ["purchase", "purchase"],
            "weight": [1.0, 1.0],
        }
    ).astype(history.dtypes.to_dict())
    with_late = pd.concat([history, late], ignore_index=True)
    users = ["u00", "u01"]
    np.testing.assert_array_equal(
        trained.embed_users(users, history, as_of), trained.embed_users(users, with_late, as_of)
    )
    encoder = trained.user_encoder(history, as_of)
    bags = encoder._bags(np.array(["u00"], dtype=object))
    seen = history[(history["user_id"] == "u00") & (history["ts"] < as_of)]
    assert len(bags.items) == min(len(seen), TOY_TWO_TOWER.history_length)
    assert float(bags.weights.sum()) == pytest.approx(1.0)


def test_users_without_history_get_the_learned_cold_vector(trained, toy_split):
    history = toy_split.history("test")
    as_of = toy_split.test_cutoff
    vectors = trained.embed_users(["nobody", "also-nobody", "u00"], history, as_of)
    cold = torch.nn.functional.normalize(trained.model.user_tower.cold.detach(), dim=0).numpy()
    np.testing.assert_allclose(vectors[0], cold, rtol=1e-6)
    np.testing.assert_allclose(vectors[1], cold, rtol=1e-6)
    assert not np.allclose(vectors[2], cold)
    # A user whose only interactions come at or after as_of is cold too.
    early = trained.embed_users(["u00"], history, TOY_START)
    np.testing.assert_allclose(early[0], cold, rtol=1e-6)


# ------------------------------------------------------------------------- the loss


def test_log_q_correction_matches_a_hand_computed_softmax():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])  # 2 positives + 1 extra
    log_q = torch.log(torch.tensor([0.5, 0.25, 0.1]))
    temperature = 0.5
    loss = sampled_softmax_loss(users, items, log_q, temperature)
    logits = users.numpy() @ items.numpy().T / temperature - log_q.numpy()[None, :]
    expected = np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(logits)])
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # Popular items are penalised less as negatives once corrected: the loss differs.
    uncorrected = sampled_softmax_loss(users, items, torch.zeros(3), temperature)
    assert float(uncorrected) != pytest.approx(expected)
    # Candidates that are the user's own positive item are not negatives.
    same = torch.tensor([[False, False, True], [False, False, False]])
    masked = sampled_softmax_loss(users, items, log_q, temperature, same)
    row0 = logits[0, :2]
    expected_masked = np.mean(
        [np.log(np.exp(row0).sum()) - row0[0], np.log(np.exp(logits[1]).sum()) - logits[1, 1]]
    )
    assert float(masked) == pytest.approx(expected_masked, rel=1e-6)


# ------------------------------------------------------------------------- training


def test_training_histories_are_strictly_before_each_target(toy_split):
    config = TOY_TWO_TOWER
    frame = toy_split.history("valid")
    featurizer = ItemFeaturizer.fit(
        toy_split.tables.items, price_buckets=4, age_buckets=8, text_buckets=64
    )
    data = _build_training_data(frame, toy_split.tables.items, featurizer, config)
    rows, offsets, _, _ = _training_bags(data, data.targets, config, np.random.default_rng(0))
    catalogue = toy_split.tables.items["item_id"].to_numpy()
    for position, target in enumerate(data.targets):
        user = data.index.user_codes[target]
        start = data.index.user_start[user]
        expected = [
            row for row in range(start, target) if data.index.ts_us[row] < data.index.ts_us[target]
        ][-config.history_length :]
        got = rows[offsets[position] : offsets[position + 1]]
        assert list(got) == list(data.index.item_rows[expected])
        assert catalogue[data.index.item_rows[target]] not in set(catalogue[got])


def test_training_histories_exclude_rows_at_the_same_time_as_the_target():
    times = ["10:00", "10:10", "10:10", "12:00"]
    frame = pd.DataFrame(
        {
            "user_id": "u",
            "item_id": ["a", "b", "c", "d"],
            "ts": pd.to_datetime([f"2026-01-05T{t}:00Z" for t in times]),
            "event": "view",
            "weight": 1.0,
        }
    )
    items = pd.DataFrame({"item_id": list("abcd")})
    featurizer = ItemFeaturizer.fit(items, price_buckets=4, age_buckets=8, text_buckets=64)
    data = _build_training_data(frame, items, featurizer, TOY_TWO_TOWER)
    rows, offsets, _, _ = _training_bags(
        data, data.targets, TOY_TWO_TOWER, np.random.default_rng(0)
    )
    histories = {
        items["item_id"][data.index.item_rows[target]]: list(
            items["item_id"][rows[offsets[position] : offsets[position + 1]]]
        )
        for position, target in enumerate(data.targets)
    }
    assert histories == {"a": [], "b": ["a"], "c": ["a"], "d": ["a", "b", "c"]}


def test_untimed_training_histories_leave_the_target_out():
    frame = pd.DataFrame(
        {
            "user_id": ["a"] * 5 + ["b"] * 2,
            "item_id": ["1", "2", "3", "4", "5", "1", "2"],
            "ts": pd.Series(pd.NaT, index=range(7), dtype="datetime64[us, UTC]"),
            "event": "interaction",
            "weight": 1.0,
        }
    )
    items = pd.DataFrame({"item_id": ["1", "2", "3", "4", "5"]})
    featurizer = ItemFeaturizer.fit(items, price_buckets=4, age_buckets=8, text_buckets=64)
    config = TOY_TWO_TOWER.model_copy(update={"history_length": 3})
    data = _build_training_data(frame, items, featurizer, config)
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows, offsets, _, counts = _training_bags(data, data.targets, config, rng)
        for position, target in enumerate(data.targets):
            got = rows[offsets[position] : offsets[position + 1]]
            assert data.index.item_rows[target] not in got
            assert len(got) == min(3, counts[position])


def test_user_runs_keep_consecutive_targets_of_a_user_together_in_random_order():
    # Pools 0 and 1; targets given sorted by user then time, as the training data holds them.
    pool = np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1])
    users = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    orders = [_user_run_order(pool, users, 2, np.random.default_rng(seed)) for seed in range(30)]
    for order in orders:
        assert sorted(order) == list(range(len(pool)))
        # Pool by pool, each user's targets of a pool in runs of at most 2 consecutive
        # targets, in time order: user 0's five pool-0 targets are runs {0,1} {2,3} {4}.
        assert (np.diff(pool[order]) >= 0).all()
        position = {target: at for at, target in enumerate(order)}
        for first, second in ((0, 1), (2, 3), (5, 6), (7, 8)):
            assert position[second] == position[first] + 1
    # The runs' order is random: a user's runs are apart in some orders, user 0's last
    # pool-0 run does not always come last.
    assert any(list(order).index(2) != list(order).index(1) + 1 for order in orders)
    assert len({tuple(order) for order in orders}) > 5
    assert any(list(order).index(4) < list(order).index(7) for order in orders)
    assert any(list(order).index(4) > list(order).index(7) for order in orders)
    # Run 1: every target on its own.
    singles = [_user_run_order(pool, users, 1, np.random.default_rng(s)) for s in range(30)]
    assert any(list(order).index(1) != list(order).index(0) + 1 for order in singles)


def test_batches_come_from_one_time_window_and_cover_every_target_once(toy_split):
    config = TOY_TWO_TOWER.model_copy(update={"batch_window": "2D", "batch_size": 8})
    featurizer = ItemFeaturizer.fit(
        toy_split.tables.items, price_buckets=4, age_buckets=8, text_buckets=64
    )
    data = _build_training_data(
        toy_split.history("valid"), toy_split.tables.items, featurizer, config
    )
    batches = _epoch_batches(data, config, np.random.default_rng(0))
    drawn = np.concatenate([batch for batch, _ in batches])
    assert sorted(drawn) == sorted(data.targets)
    two_days = 2 * 86_400_000_000
    for batch, shares in batches:
        assert len(batch) <= 8
        times = data.index.ts_us[batch]
        assert times.max() - times.min() < two_days
        # The pool's shares: each batch item is counted, the shares sum to one.
        assert (shares(data.index.item_rows[batch]) > 0).all()
        assert shares.shares.sum() == pytest.approx(1.0)
    whole = _epoch_batches(
        data, config.model_copy(update={"batch_window": None}), np.random.default_rng(0)
    )
    _, shares = whole[0]
    counts = np.bincount(data.index.item_rows[data.targets])
    rows = np.flatnonzero(counts)
    np.testing.assert_allclose(shares(rows), counts[rows] / len(data.targets))


def test_same_seed_and_data_give_identical_embeddings(toy_split):
    config = TOY_TWO_TOWER.model_copy(update={"max_epochs": 2})
    validation = encoder_validation(toy_split, config)
    first = train_two_tower(toy_split, config, "valid", validation=validation)
    second = train_two_tower(toy_split, config, "valid", validation=validation)
    items = toy_split.tables.items
    cutoff = toy_split.valid_cutoff
    np.testing.assert_array_equal(
        first.embed_items(items, cutoff), second.embed_items(items, cutoff)
    )
    history = toy_split.history("valid")
    users = ["u00", "u01", "u07"]
    np.testing.assert_array_equal(
        first.embed_users(users, history, cutoff), second.embed_users(users, history, cutoff)
    )
    assert [e["loss"] for e in first.epochs] == [e["loss"] for e in second.epochs]


def test_time_is_only_a_safety_net_whose_reaching_the_report_warns_of(toy_split):
    """A temporal fit refits on the test history whatever the clock says; only the safety
    net stops a fit early, and the epoch and the run report say so."""
    from components.pipeline.report import safety_net_warnings

    config = TOY_TWO_TOWER.model_copy(update={"max_epochs": 3})
    _, normal = train_two_tower_stages(toy_split, config, "test", validation=None)
    phases = [r["phase"] for r in normal.epochs]
    assert phases[:3] == ["fit"] * 3 and "refit" in phases[3:]
    assert safety_net_warnings(normal.epochs) == []

    hurried = config.model_copy(update={"max_training_seconds": 1e-6})
    _, stopped = train_two_tower_stages(toy_split, hurried, "test", validation=None)
    fit = [r for r in stopped.epochs if r["phase"] == "fit"]
    assert len(fit) == 1 and fit[0]["safety_net_reached"] is True
    warnings = safety_net_warnings(stopped.epochs)
    assert warnings and "max_training_seconds at epoch 1" in warnings[0]


def test_save_load_round_trip_gives_the_same_vectors(trained, toy_split, tmp_path):
    trained.save(tmp_path / "model")
    loaded = TrainedTwoTower.load(tmp_path / "model")
    items = toy_split.tables.items
    history = toy_split.history("test")
    as_of = toy_split.test_cutoff
    np.testing.assert_array_equal(
        trained.embed_items(items, as_of), loaded.embed_items(items, as_of)
    )
    np.testing.assert_array_equal(
        trained.embed_users(["u00", "u03", "nobody"], history, as_of),
        loaded.embed_users(["u00", "u03", "nobody"], history, as_of),
    )
    assert loaded.config == trained.config
    assert loaded.epochs == trained.epochs
    assert not list((tmp_path / "model").glob("*.pkl"))


def test_epochs_are_recorded_with_loss_and_valid_recall(trained):
    fit = [record for record in trained.epochs if record["phase"] == "fit"]
    refit = [record for record in trained.epochs if record["phase"] == "refit"]
    assert fit and all(f"valid_recall@{TOY_TWO_TOWER.early_stopping_k}" in record for record in fit)
    assert all(np.isfinite(record["loss"]) for record in trained.epochs)
    assert 1 <= len(refit) <= len(fit)


def test_learns_each_users_kind_and_ranks_unseen_listings_of_it_first(trained, toy_split):
    as_of = toy_split.test_cutoff
    items = toy_split.tables.items
    scorer = TwoTowerScorer(trained, items, toy_split.history("test"), as_of)
    users = [f"u{n:02d}" for n in range(30)]
    scores = scorer.score(users, items["item_id"].tolist())
    shoe = items["category"].eq("shoes").to_numpy()
    wants_shoes = np.array([n % 2 == 0 for n in range(30)])
    own_kind = np.where(wants_shoes[:, None], shoe[None, :], ~shoe[None, :])
    own = np.where(own_kind, scores, np.nan)
    other = np.where(~own_kind, scores, np.nan)
    assert (np.nanmean(own, axis=1) > np.nanmean(other, axis=1)).mean() >= 0.9
    # Brand-new listings, never in training: each user's kind first.
    new = scorer.score(users, ["shoe_new", "bag_new"])
    prefers_shoe = new[:, 0] > new[:, 1]
    assert (prefers_shoe == wants_shoes).mean() >= 0.8
    # On the cold-start protocol (42 candidates, 21 of the user's kind): the new listing is
    # among the user's top 21 for most users (chance: about half of them).
    task = cold_start_task(toy_split, EvaluationConfig(), "test")
    result = evaluate_scorer(scorer, task, (21,))
    assert result.metrics["recall@21"] >= 0.8


def test_scorer_matches_vectors_and_scores_unknown_items_lowest(trained, toy_split):
    as_of = toy_split.test_cutoff
    items = toy_split.tables.items
    scorer = TwoTowerScorer(trained, items, toy_split.history("test"), as_of)
    scores = scorer.score(["u00", "nobody"], ["shoe01", "bag01", "not-an-item"])
    expected = scorer.user_vectors(["u00", "nobody"]) @ scorer.item_vectors(["shoe01", "bag01"]).T
    np.testing.assert_allclose(scores[:, :2], expected, rtol=1e-6)
    assert (scores[:, 2] < scores[:, :2].min()).all()
    assert scores.dtype == np.float32
    with pytest.raises(KeyError, match="not-an-item"):
        scorer.item_vectors(["not-an-item"])
    task = build_evaluation_task(toy_split, "test", EvaluationConfig())
    assert evaluate_scorer(scorer, task, (5,)).metrics["recall@5"] > 0


def test_users_asked_one_at_a_time_get_the_vectors_of_one_batch(trained, toy_split):
    """The served model asks for one user per request: the scorer's growing cache of user
    vectors answers as one batch encoding does, and `encode_history_users` fills it."""
    as_of = toy_split.test_cutoff
    items = toy_split.tables.items
    history = toy_split.history("test")
    users = sorted(history["user_id"].astype(str).unique())
    batch = TwoTowerScorer(trained, items, history, as_of).user_vectors([*users, "nobody"])
    one_by_one = TwoTowerScorer(trained, items, history, as_of)
    single = np.vstack([one_by_one.user_vectors([user]) for user in [*users, "nobody"]])
    # The same vectors up to float rounding (matrix products of other batch sizes).
    np.testing.assert_allclose(single, batch, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(one_by_one.user_vectors(users[::-1]), single[:-1][::-1])
    warmed = TwoTowerScorer(trained, items, history, as_of)
    assert warmed.encode_history_users(limit=len(users) - 1) == 0
    assert warmed.encode_history_users(limit=len(users)) == len(users)
    assert set(warmed._user_rows) == set(users)
    np.testing.assert_allclose(warmed.user_vectors(users), batch[:-1], rtol=1e-5, atol=1e-6)


def test_concurrent_requests_get_their_own_users_vectors(trained, toy_split, monkeypatch):
    """MLflow's server answers a worker's requests on several threads: users first asked
    at the same time (the cache growing under them) still get their own vectors, and
    catalogue lists asked at once their own alignments (a 500 was seen at 4 clients)."""
    import contextlib
    import sys
    import threading

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        as_of = toy_split.test_cutoff
        items = toy_split.tables.items
        history = toy_split.history("test")
        users = sorted(history["user_id"].astype(str).unique())
        wanted = [*users, *(f"new-{n}" for n in range(200))]
        expected = TwoTowerScorer(trained, items, history, as_of).user_vectors(wanted)
        catalogues = [items["item_id"].astype(str).tolist()[offset:] for offset in range(4)]
        for _ in range(5):
            shared = TwoTowerScorer(trained, items, history, as_of)
            encode, together = shared._encoder.encode, threading.Barrier(8, timeout=0.5)
            waited = threading.local()

            def encode_together(users, encode=encode, together=together, waited=waited):
                """Each thread's first users encoded, then all eight go on at once: the
                race the cache must survive. A scorer that encodes under its lock lets one
                thread in at a time, so the meeting times out and they go on in turn."""
                encoded = encode(users)
                if not getattr(waited, "done", False):
                    waited.done = True
                    with contextlib.suppress(threading.BrokenBarrierError):
                        together.wait()
                return encoded

            monkeypatch.setattr(shared._encoder, "encode", encode_together)
            got: dict[int, np.ndarray] = {}
            aligned: dict[int, np.ndarray] = {}
            failures: list[BaseException] = []

            def ask(start: int, shared=shared, got=got, aligned=aligned, failures=failures):
                try:
                    for row in range(start, len(wanted), 8):
                        got[row] = shared.user_vectors([wanted[row]])[0]
                        catalogue = catalogues[row % len(catalogues)]
                        aligned[row] = shared.score([wanted[row]], catalogue)[0]
                except BaseException as error:
                    failures.append(error)

            threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert not failures, failures[:1]
            single = np.vstack([got[row] for row in range(len(wanted))])
            np.testing.assert_allclose(single, expected, rtol=1e-5, atol=1e-6)
            for row, scores in aligned.items():
                catalogue = catalogues[row % len(catalogues)]
                want = expected[row] @ shared.item_vectors(catalogue).T
                np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)
    finally:
        sys.setswitchinterval(interval)


# ------------------------------------------------------------------------- speed paths


def test_warm_refit_continues_the_fit_on_the_valid_window_with_new_listings_added(toy_split):
    validation = encoder_validation(toy_split, TOY_TWO_TOWER)
    fitted, served = train_two_tower_stages(toy_split, TOY_TWO_TOWER, "test", validation=validation)
    refit = [record for record in served.epochs if record["phase"] == "refit"]
    assert len(refit) == 1  # one pass over the targets the fit has not seen
    valid = toy_split.window("valid")
    new_pairs = valid.drop_duplicates(["user_id", "item_id"]).merge(
        toy_split.history("valid")[["user_id", "item_id"]].drop_duplicates(),
        how="left",
        indicator=True,
    )
    assert refit[0]["examples"] == int((new_pairs["_merge"] == "left_only").sum())
    # Every id the fit knew keeps its learned row; listings first seen in the valid window
    # get rows of their own; bucket edges are the fit's.
    assert set(fitted.featurizer.item_ids) <= set(served.featurizer.item_ids)
    new_ids = set(valid["item_id"]) - set(toy_split.history("valid")["item_id"])
    assert new_ids <= set(served.featurizer.item_ids)
    np.testing.assert_array_equal(served.featurizer.price_edges, fitted.featurizer.price_edges)
    # The fitted model is left as it was (the ranker's label stage uses it).
    assert [r["phase"] for r in fitted.epochs] == ["fit"] * len(fitted.epochs)


@pytest.mark.parametrize("sparse_id_rows", [65_536, 1])
def test_warm_start_copies_weights_and_moments_by_value(sparse_id_rows: int):
    config = TOY_TWO_TOWER.model_copy(update={"sparse_id_rows": sparse_id_rows})
    old_items = pd.DataFrame({"item_id": ["b", "d"], "brand": ["Nike", "Zara"]})
    new_items = pd.DataFrame(
        {"item_id": ["a", "b", "c", "d"], "brand": ["Adidas", "Nike", None, "Zara"]}
    )
    kwargs = {"price_buckets": 4, "age_buckets": 6, "text_buckets": 64}
    old_f = ItemFeaturizer.fit(old_items, **kwargs)
    new_f = _extended_featurizer(old_f, ItemFeaturizer.fit(new_items, **kwargs))
    old_model = TwoTowerModel(old_f, 0, config)
    optimiser = _adam(old_model, config)
    loss = old_model.item_tower.item_id.weight.sum() + old_model.item_tower.categorical.weight.sum()
    loss.backward()
    optimiser.step()
    trained = TrainedTwoTower(old_model, old_f, old_items, (), config, None)
    model = TwoTowerModel(new_f, 0, config)
    fresh = copy.deepcopy(model.state_dict())
    new_optimiser = _adam(model, config)
    _load_warm_start(
        model, new_optimiser, _WarmStart(trained, optimiser.state_dict(), None), new_f, ()
    )
    ids_old, ids_new = old_model.item_tower.item_id.weight, model.item_tower.item_id.weight
    for item in ("b", "d"):
        old_row = old_f.item_ids.index(item) + 1
        new_row = new_f.item_ids.index(item) + 1
        torch.testing.assert_close(ids_new[new_row], ids_old[old_row])
    for item in ("a", "c"):  # new ids keep their fresh initial weights
        row = new_f.item_ids.index(item) + 1
        torch.testing.assert_close(ids_new[row], fresh["item_tower.item_id.weight"][row])
    brand = list(new_f.vocabularies).index("brand")
    new_offset = int(model.item_tower.categorical_offsets[brand])
    old_offset = int(old_model.item_tower.categorical_offsets[brand])
    nike_new = new_offset + new_f.vocabularies["brand"].index("Nike") + 1
    nike_old = old_offset + old_f.vocabularies["brand"].index("Nike") + 1
    torch.testing.assert_close(
        model.item_tower.categorical.weight[nike_new],
        old_model.item_tower.categorical.weight[nike_old],
    )
    torch.testing.assert_close(
        model.item_tower.content[0].weight, old_model.item_tower.content[0].weight
    )
    # Above sparse_id_rows the id table is sparse: its moments are lazy Adam's.
    part = "sparse" if sparse_id_rows == 1 else "dense"
    assert model.item_tower.item_id.sparse == (part == "sparse")
    position = new_optimiser.names[part].index("item_tower.item_id.weight")
    moments = new_optimiser.state_dict()[part]["state"][position]["exp_avg"]
    old_moments = optimiser.state_dict()[part]["state"][position]["exp_avg"]
    torch.testing.assert_close(
        moments[new_f.item_ids.index("d") + 1], old_moments[old_f.item_ids.index("d") + 1]
    )
    assert not moments[new_f.item_ids.index("a") + 1].any()


def test_same_content_shortcut_gives_the_full_towers_vectors_and_gradients():
    items = pd.DataFrame({"item_id": [str(n) for n in range(6)]})  # no content at all
    featurizer = ItemFeaturizer.fit(items, price_buckets=4, age_buckets=6, text_buckets=64)
    arrays = featurizer.transform(items)
    rows = np.array([0, 3, 3, 5, 1])
    batch = ItemBatch.from_arrays(arrays.take(rows), np.zeros(len(rows), dtype=np.int64))
    torch.manual_seed(0)
    model = TwoTowerModel(featurizer, 0, TOY_TWO_TOWER)
    results = []
    for same in (False, True):
        model.zero_grad()
        vectors = model.item_tower(batch, same_content=same)
        (vectors * torch.arange(vectors.numel()).reshape(vectors.shape)).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((vectors.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-5)


def test_epoch_scorers_score_as_a_fresh_scorer_and_featurize_once(trained, toy_split):
    items, history, as_of = (
        toy_split.tables.items,
        toy_split.history("valid"),
        toy_split.valid_cutoff,
    )
    scorers = EpochScorers(items, history, as_of)
    fresh = TwoTowerScorer(trained, items, history, as_of)
    users = sorted(toy_split.valid["user_id"].unique())
    catalogue = items["item_id"].tolist()
    expected = fresh.score(users, catalogue)
    np.testing.assert_array_equal(scorers.scorer(trained).score(users, catalogue), expected)
    prepared = scorers._prepared
    np.testing.assert_array_equal(scorers.scorer(trained).score(users, catalogue), expected)
    assert scorers._prepared is prepared  # featurized once, reused


def test_large_id_tables_move_only_the_rows_a_batch_touched(toy_split):
    """Above `sparse_id_rows`, the listing id table has sparse gradients and lazy Adam: a
    step leaves the rows no example touched as they were (dense Adam moves every row with
    a moment), and the model still learns the users' kinds."""
    config = TOY_TWO_TOWER.model_copy(update={"sparse_id_rows": 1})
    items = pd.DataFrame({"item_id": [f"i{n}" for n in range(50)], "brand": ["a", "b"] * 25})
    featurizer = ItemFeaturizer.fit(items, price_buckets=4, age_buckets=6, text_buckets=64)
    model = TwoTowerModel(featurizer, 0, config)
    optimiser = _adam(model, config)
    assert optimiser.names["sparse"] == ["item_tower.item_id.weight"]
    arrays = featurizer.transform(items).take(np.array([0, 3, 3, 5]))
    batch = ItemBatch.from_arrays(arrays, np.zeros(4, dtype=np.int64))
    before = model.item_tower.item_id.weight.detach().clone()
    for _ in range(2):
        optimiser.zero_grad()
        model.item_tower(batch).sum().backward()
        assert model.item_tower.item_id.weight.grad.is_sparse
        optimiser.step()
    after = model.item_tower.item_id.weight.detach()
    touched = np.unique(np.asarray(arrays.ids))
    assert len(touched) == 3 and 0 not in touched  # row 0 is the unknown id
    moved = (after != before).any(dim=1).numpy()
    assert moved[touched].all() and moved.sum() == len(touched)

    validation = encoder_validation(toy_split, config)
    fitted, _ = train_two_tower_stages(toy_split, config, "valid", validation=validation)
    dense, _ = train_two_tower_stages(toy_split, TOY_TWO_TOWER, "valid", validation=validation)
    key = f"valid_recall@{TOY_TWO_TOWER.early_stopping_k}"
    lazy_recall = max(record[key] for record in fitted.epochs if key in record)
    dense_recall = max(record[key] for record in dense.epochs if key in record)
    assert lazy_recall >= dense_recall - 0.1
