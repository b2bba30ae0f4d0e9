"""What the dense user x item scorers share: products that do not depend on the batch."""

from __future__ import annotations

import numpy as np

from components.retrieval.user_item_scorer import batch_invariant_product


def test_a_row_multiplied_alone_equals_the_same_row_in_a_batch() -> None:
    """BLAS sums one row in another order than a block of rows; float32 results then
    differ in the last bit between a served request (one user) and an evaluation batch
    (with plain `users @ items` some rows of this test differ on the development machine's
    OpenBLAS)."""
    rng = np.random.default_rng(0)
    users = rng.standard_normal((300, 64)).astype(np.float32)
    items = rng.standard_normal((64, 3000)).astype(np.float32)

    batch = batch_invariant_product(users, items)

    assert batch.dtype == np.float32
    for row in range(len(users)):
        np.testing.assert_array_equal(
            batch_invariant_product(users[row : row + 1], items)[0], batch[row]
        )
    np.testing.assert_allclose(batch, users @ items, rtol=1e-5, atol=1e-5)
