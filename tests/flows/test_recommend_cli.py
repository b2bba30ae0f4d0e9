"""`rewear recommend` against a registered champion: a readable table for users and
anonymous sessions, clear errors for bad input."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_recommend_prints_item_title_category_price_score_and_source(tiny_champion, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["recommend", "--user-id", "u1", "--k", "2", "--exclude", "i6"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "title" in line)
    for column in ("rank", "item", "title", "category", "price", "score", "source"):
        assert column in header
    assert "top 2 for user u1" in result.output
    lines = [line for line in result.output.splitlines() if "listing" in line]
    # u1 bought i5 and i6 is excluded: i1 (7 views) then i2 (5 views).
    assert ["i1" in lines[0], "i2" in lines[1]] == [True, True]
    assert "listing 1" in lines[0] and "dresses" in lines[0] and "11.00" in lines[0]
    assert "7.0000" in lines[0] and "recent_popularity" in lines[0]


def test_recommend_for_an_anonymous_session(tiny_champion, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["recommend", "--recent-item", "i9", "--k", "1"])
    assert result.exit_code == 0, result.output
    assert "an anonymous session" in result.output
    assert "session_popularity" in result.output and "listing 5" in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["recommend"], "give --user-id, or --recent-item"),
        (["recommend", "--user-id", "u1", "--k", "0"], "k must be between 1 and 1000, got 0"),
    ],
)
def test_recommend_refuses_bad_input_with_exit_code_2(tiny_champion, arguments, message):
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert message in result.output
