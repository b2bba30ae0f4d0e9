"""What the served bundle carries besides the model (`serving`)."""

from __future__ import annotations

from pydantic import Field

from components.config.base import StrictModel


class RankedListsConfig(StrictModel):
    """Each known user's two-stage answer, computed when the bundle is written
    (components.serving.ranked_lists): a request takes the first k its exclusions leave
    instead of ranking the user's candidates, ~0.1 ms instead of ~7 (docs/serving.md).
    Only bundles with a ranker carry them."""

    enabled: bool = True
    #: Answers kept per user: any k up to it, with exclusions, is answered from the list.
    depth: int = Field(50, ge=1, le=1000)
    #: Users with lists, the most recently active first (each costs ~3 ms at bundle time
    #: and 14 bytes x depth on disk); the others are ranked per request.
    max_users: int = Field(100_000, ge=1)
    #: Users ranked per batch while computing the lists (memory: ~200 candidates each).
    batch_users: int = Field(512, ge=1)


class ServingConfig(StrictModel):
    ranked_lists: RankedListsConfig = RankedListsConfig()
