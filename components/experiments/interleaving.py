"""Team-draft interleaving (Radlinski, Kurup & Joachims 2008; Chapelle et al. 2012): both
arms' ranked lists merged into one, each slot credited to the arm (team) that drafted it,
so every unit compares the two rankers on the same screen.

At each step the team with fewer picks drafts its highest-ranked item not yet shown (a
coin decides when both have picked as often); an item both lists hold goes to whoever
drafts it first. The coin comes from a generator seeded by the request, so a logged
request can be replayed to the same list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from components.experiments.schema import CONTROL, TREATMENT


@dataclass(frozen=True)
class InterleavedList:
    """The merged list: for each slot, the item, the team that drafted it and the slot's
    index in that team's own list (so its score and source can be looked up)."""

    items: list[str]
    teams: list[str]
    team_ranks: list[int]


def request_rng(salt: str, request_id: str) -> np.random.Generator:
    """A generator seeded by (salt, request id): the same request draws the same coins."""
    digest = hashlib.sha256(f"{salt}:{request_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def team_draft(
    control: Sequence[str], treatment: Sequence[str], k: int, rng: np.random.Generator
) -> InterleavedList:
    """Interleave two ranked lists of item ids into at most `k` distinct slots."""
    if k < 1:
        raise ValueError(f"k={k}: an interleaved list needs at least one slot")
    lists = {CONTROL: list(control), TREATMENT: list(treatment)}
    cursor = {CONTROL: 0, TREATMENT: 0}
    picks = {CONTROL: 0, TREATMENT: 0}
    shown: set[str] = set()
    items: list[str] = []
    teams: list[str] = []
    team_ranks: list[int] = []

    def next_unshown(team: str) -> int | None:
        ranked = lists[team]
        while cursor[team] < len(ranked) and ranked[cursor[team]] in shown:
            cursor[team] += 1
        return cursor[team] if cursor[team] < len(ranked) else None

    while len(items) < k:
        available = {team: next_unshown(team) for team in lists}
        candidates = [team for team, at in available.items() if at is not None]
        if not candidates:
            break
        if len(candidates) == 1:
            team = candidates[0]
        elif picks[CONTROL] != picks[TREATMENT]:
            team = CONTROL if picks[CONTROL] < picks[TREATMENT] else TREATMENT
        else:
            team = TREATMENT if rng.random() < 0.5 else CONTROL
        at = available[team]
        assert at is not None
        item = lists[team][at]
        shown.add(item)
        items.append(item)
        teams.append(team)
        team_ranks.append(at)
        picks[team] += 1
    return InterleavedList(items=items, teams=teams, team_ranks=team_ranks)
