"""Training of the two-tower encoder: `train_two_tower_stages` and everything it samples.

What is here: the fit (epochs, early stopping, the warm-started refit), the sampled
batches and their loss, and the numpy training data they are drawn from. The towers and
the loss function are in `components.retrieval.two_tower_network`; the fitted model it
returns (`TrainedTwoTower`) and its scorer are in `components.retrieval.two_tower`.

Training: sampled softmax over (history before the target, target) pairs, with the log-Q
correction of Yi et al. (RecSys 2019): the logit of each candidate j is cos(u, v_j) /
temperature - log q_j, q_j the expected count of j among the candidates. Candidates are the
batch's other targets plus `extra_negatives` listings drawn uniformly among those live at
the batch's time (mixed negative sampling, Yang et al. 2020): q_j = B share_j + M / n_live.
With timestamps, every user's interactions are replayed in time order: a target's history
is what the user did strictly before it, targets are each (user, item) pair's first
interaction, and each batch is drawn from one `batch_window` of time, so its negatives are
listings live at about the same time and share_j is their popularity in that window. This
matters on a marketplace: with batches drawn from the whole history, log-Q teaches each
listing its lifetime popularity and stale listings that were once popular come back (valid
recall fell epoch after epoch; with daily windows it holds). The uniform negatives are what
teaches freshness (listing age): the other targets are as fresh as the positive, live stock
mostly is not. Figures: docs/models.md, "Measurements behind the defaults".

Without timestamps (fixed splits) each training interaction is a
target whose history is a fresh sample of the user's other training items (leave-one-out),
never a valid/test item, and batches are drawn from all interactions. With timestamps the
targets are shuffled in runs of up to `user_run` consecutive targets of one user: their
history bags are nearly the same prefix, whose listings the batch's item-tower pass embeds
once, so an example costs about the same on a large catalogue as on a small one; a user's
other targets in the batch are masked out of its negatives.

Epochs and refit (`train_two_tower`): the model is fitted on `split.history("valid")` and
early-stopped on the valid window by the `validation` the caller passes in (a
`components.interfaces.Validation`; the pipeline's is exact full-ranking
recall@`early_stopping_k` with history masked as in the evaluation protocol, built by
`encoder_validation` of the evaluation package: retrieval imports no evaluation code); the
best epoch's weights are kept. For stage "test" of a temporal split the served model must
also have seen the most recent week (`refit_on_test_history`): by default
(`refit_warm_start`) the early-stopped model, with the Adam moments of its epoch, is
continued for one pass over the valid window's targets (their histories reach back into
the train window; listings, sellers and brands first seen in the valid window get rows of
their own, bucket edges stay the fit's). That is what a from-scratch refit on train + valid
for the chosen epochs would teach it about the new week, at a fraction of the cost (and
no worse: docs/models.md; more passes over one week overfit it); with
`refit_warm_start: false` the refit is from scratch. A fixed split's test-stage history is
the train file, so the early-stopped model is the result.

Speed (CPU, 2 threads): the optimiser is Adam's fused kernel, and lazy Adam for id tables
above `sparse_id_rows` (`_Adam`: a step then costs its batch, not the catalogue); the
item tower runs once
per distinct (listing, age bucket) of a batch, and on the content path once per batch when
no listing has content features (fixed splits); the early-stopping check scores the model
through `EpochScorers`, which featurizes the valid window's listings and histories once per
fit and only reruns the towers.

Stage "valid" is the tuning mode: its valid-window metrics chose the epoch, so they are
optimistic by construction.
"""

from __future__ import annotations

from components.retrieval.two_tower_training.stages import train_two_tower, train_two_tower_stages

__all__ = ["train_two_tower", "train_two_tower_stages"]
