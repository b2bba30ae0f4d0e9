"""Write a bundle's ranked lists (`components.serving.ranked_lists`) from the bundle itself:
the served recommender is loaded from the folder just written and batch-ranks its users,
so the lists are the answers of exactly what is served."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from components.config import RankedListsConfig
from components.serving.bundle import TWO_STAGE_DIR
from components.serving.ranked_lists import RANKED_LISTS_DIR, lists_from_answers
from components.serving.recommender import BundleRecommender

log = logging.getLogger(__name__)
#: Progress lines while the lists are computed (one per this share of the users).
PROGRESS_STEP = 0.25


def write_ranked_lists(folder: Path, settings: RankedListsConfig) -> dict[str, object] | None:
    """Compute and save the lists into the (not yet sealed) bundle at `folder`; None when
    the bundle has no ranker or the lists are disabled. Returns what was written."""
    if not settings.enabled or not (Path(folder) / TWO_STAGE_DIR).is_dir():
        return None  # lists are the ranker's answers: without one there is nothing to store
    recommender = BundleRecommender.load(Path(folder), checked=False)
    started = time.perf_counter()
    known = most_recent_first(recommender)
    users = known[: settings.max_users]
    answers = {}
    next_report = PROGRESS_STEP
    for start in range(0, len(users), settings.batch_users):
        batch = users[start : start + settings.batch_users]
        answers.update(recommender.two_stage_answers(batch, settings.depth))
        if len(answers) >= next_report * len(users) and len(answers) < len(users):
            log.info("ranked lists: %d of %d users", len(answers), len(users))
            next_report += PROGRESS_STEP
    seconds = round(time.perf_counter() - started, 3)
    # What the lists are, in the bundle; not how long they took: the same inputs must
    # write the same bytes (a resumed run's bundle is the uninterrupted run's).
    described: dict[str, object] = {
        "known_users": len(known),
        "max_users": settings.max_users,
        "batch_users": settings.batch_users,
    }
    lists_from_answers(answers, settings.depth, described).save(Path(folder) / RANKED_LISTS_DIR)
    log.info(
        "ranked lists: %d users (of %d the ranker knows) x %d answers in %.1f s",
        len(users),
        len(known),
        settings.depth,
        seconds,
    )
    return {**described, "users": len(users), "depth": settings.depth, "seconds": seconds}


def most_recent_first(recommender: BundleRecommender) -> list[str]:
    """The users the ranker answers, the most recently active first (ties by id): those
    are the likeliest to come back while this bundle is served."""
    users = recommender.two_stage.features.users
    ids = users.index.astype(str).to_numpy(dtype=object)
    if "u_days_since_last" in users.columns:
        idle = users["u_days_since_last"].to_numpy(dtype=np.float64, na_value=np.inf)
    else:
        idle = np.zeros(len(ids))
    order = np.lexsort((ids, idle))
    return [str(user) for user in ids[order]]
