"""Team-draft interleaving: fair drafting, no duplicates, replayable by request."""

from __future__ import annotations

import numpy as np

from components.experiments.interleaving import request_rng, team_draft
from components.experiments.schema import CONTROL, TREATMENT


def test_each_team_drafts_its_best_unshown_item_and_picks_stay_balanced() -> None:
    control = ["a", "b", "c", "d", "e"]
    treatment = ["b", "a", "f", "g", "h"]
    merged = team_draft(control, treatment, 6, np.random.default_rng(3))
    assert len(merged.items) == len(set(merged.items)) == 6
    counts = {team: merged.teams.count(team) for team in (CONTROL, TREATMENT)}
    assert abs(counts[CONTROL] - counts[TREATMENT]) <= 1
    for item, team, at in zip(merged.items, merged.teams, merged.team_ranks, strict=True):
        assert (control if team == CONTROL else treatment)[at] == item
    # After every pair of picks, each team has shown its highest-ranked items in order.
    for team in (CONTROL, TREATMENT):
        picked = [at for t, at in zip(merged.teams, merged.team_ranks, strict=True) if t == team]
        assert picked == sorted(picked)


def test_identical_lists_interleave_to_the_same_list_with_random_credit() -> None:
    ranked = [f"i{index}" for index in range(10)]
    first_team = []
    for seed in range(400):
        merged = team_draft(ranked, ranked, 10, np.random.default_rng(seed))
        assert merged.items == ranked
        first_team.append(merged.teams[0])
    assert 0.4 < np.mean(np.array(first_team) == TREATMENT) < 0.6


def test_a_short_list_is_completed_from_the_other_team() -> None:
    merged = team_draft(["a"], ["b", "c", "d"], 4, np.random.default_rng(0))
    assert sorted(merged.items) == ["a", "b", "c", "d"]
    assert merged.teams.count(CONTROL) == 1


def test_the_same_request_replays_the_same_coins() -> None:
    lists = ([f"c{i}" for i in range(20)], [f"t{i}" for i in range(20)])
    first = team_draft(*lists, 20, request_rng("salt", "req-1"))
    again = team_draft(*lists, 20, request_rng("salt", "req-1"))
    other = [team_draft(*lists, 20, request_rng("salt", f"req-{n}")).teams for n in range(2, 12)]
    assert first == again
    assert any(teams != first.teams for teams in other)
