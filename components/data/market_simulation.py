"""The synthetic marketplace as the users of a served recommender: it continues the
generated market day by day past its last day, and every session that opens on the
recommendations asks a policy (the served model, or an experiment of two) for a list,
examines it under a position model and responds through the generator's own taste model.

Why here: the generator (components.data.synthetic) knows each user's true tastes, so the
loop has a ground truth no log gives: the expected purchases of any list, and the global
effect of serving 100% champion against 100% challenger. The continuation keeps the
generator's mechanics: sessions arrive at its rates (activity, weekday, hour of day),
tastes keep drifting week by week, new listings keep arriving, and the sessions that do not
open on the recommendations browse organically as before. Supply is one of a kind: the
first purchase of a listing sells it for everyone, so two arms compete for it.

Random numbers come from streams keyed by (seed, day, purpose): two runs that differ only
in the policy share their sessions and every draw up to where the lists differ (common
random numbers), which is what makes the 100%-vs-100% global effect precise.

The continued tastes and listings come from `market_continuation`, the users' response to a
list (and its expected purchases) from `market_response`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config import MarketSimulationConfig, SyntheticSourceConfig
from components.data.market_continuation import (
    _ARRIVALS,
    _FEED,
    _ORGANIC,
    _extend,
    _Extended,
    _us,
)
from components.data.market_response import (
    _PURCHASE,
    _expected_list_purchases,
    _respond,
    _slot_purchase_probabilities,
)
from components.data.schema import MARKETPLACE_EVENTS
from components.data.synthetic import SyntheticMarketplace, generate_marketplace, resolve_supply
from components.data.synthetic.clock import _US_PER_DAY, _US_PER_SECOND, _time_of_day, _to_us, _utc
from components.data.synthetic.escalation import _EVENT_CODES
from components.data.synthetic.sessions import _SLOT_HOURS, _WEEKDAY_SESSIONS, _simulate_slot
from components.data.synthetic.users import _DAYS_PER_TASTE_STEP

_ENGAGING = (_EVENT_CODES["like"], _EVENT_CODES["save"], _EVENT_CODES["add_to_bag"])


#: A policy: for each user, the ranked item ids to show (at most k), given the moment and
#: the listings sold since the simulation began (which it must not show).
ListPolicy = Callable[[list[str], int, pd.Timestamp, frozenset[str]], list[list[str]]]


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """What the simulated period produced, in the canonical tables' vocabulary."""

    #: Every event of the period (organic and from the recommendations), sorted by time.
    interactions: pd.DataFrame
    #: The catalogue at the end: the generated listings and the new ones, with sold_at.
    items: pd.DataFrame
    #: One row per recommendation session: user_id, served_at, day, listings shown,
    #: views and purchases from the list.
    sessions: pd.DataFrame
    #: Listings that were already sold when a policy showed them (must stay 0).
    sold_listings_served: int
    start: pd.Timestamp
    end: pd.Timestamp


@dataclass(eq=False)
class MarketSimulation:
    """A generated marketplace, continued: `run(policy)` simulates `config.days` days."""

    marketplace: SyntheticMarketplace
    source: SyntheticSourceConfig
    config: MarketSimulationConfig

    @classmethod
    def from_source(
        cls, source: SyntheticSourceConfig, config: MarketSimulationConfig
    ) -> MarketSimulation:
        """Generate the source's market (the same tables a retrain on it read)."""
        return cls(generate_marketplace(source), resolve_supply(source), config)

    @property
    def start(self) -> pd.Timestamp:
        """The first simulated moment: the end of the generated period."""
        return _utc(self.source.start) + pd.Timedelta(days=self.source.n_days)

    @property
    def history(self) -> pd.DataFrame:
        """The generated period's interactions (what the models were trained on)."""
        return self.marketplace.tables.interactions

    def run(self, policy: ListPolicy | None) -> SimulationResult:
        """Simulate the period; `policy` None: no recommendations (organic sessions only,
        the recommendation sessions are not opened)."""
        state = _MarketState.continue_from(self, self._extended())
        sessions: list[dict[str, np.ndarray]] = []
        for day in range(self.config.days):
            sessions += state.simulate_day(day, policy)
        return state.result(sessions)

    def expected_purchases(
        self, user_ids: Sequence[str], lists: Sequence[Sequence[str]], as_of: pd.Timestamp
    ) -> np.ndarray:
        """The ground truth of a served list: expected purchases from it for each user,
        under the configured position model, with tastes as of `as_of` (listings the
        generated period does not know count nothing)."""
        extended = self._extended()
        return _expected_list_purchases(
            extended.tastes, extended.traits, self.config, user_ids, lists, as_of
        )

    def slot_purchase_probabilities(
        self, user_ids: Sequence[str], lists: Sequence[Sequence[str]], as_of: pd.Timestamp
    ) -> np.ndarray:
        """P(view) x P(purchase | view) of each listed item for its user if examined: the
        position-free part of `expected_purchases`, (users x longest list), 0 past a list's
        end (what the cost of reordering a list is computed from)."""
        extended = self._extended()
        config = self.config.model_copy(
            update={"k": max((len(items) for items in lists), default=1)}
        )
        return _slot_purchase_probabilities(
            extended.tastes, extended.traits, config, user_ids, lists, as_of
        )

    def _extended(self) -> _Extended:
        return _extend(self.marketplace, self.source, self.config)


@dataclass(eq=False)
class _MarketState:
    """What moves while the simulation runs: sold listings, social proof, events."""

    simulation: MarketSimulation
    extended: _Extended
    user_created_us: np.ndarray
    sold_us: np.ndarray
    engagement: np.ndarray
    start_us: int
    chunks: list[dict[str, np.ndarray]]
    sold_served: int = 0

    @classmethod
    def continue_from(cls, simulation: MarketSimulation, extended: _Extended) -> _MarketState:
        tables = simulation.marketplace.tables
        n_items = len(extended.traits.item_ids)
        sold_us = np.full(n_items, np.iinfo(np.int64).max)
        sold_at = tables.items["sold_at"]
        old_sold = sold_at.notna().to_numpy()
        sold_us[: len(sold_at)][old_sold] = _us(sold_at[old_sold])
        engagement = np.zeros(n_items)
        interactions = tables.interactions
        engaged = interactions["event"].isin(["like", "save", "add_to_bag"]).to_numpy()
        rows = extended.item_row.get_indexer(interactions["item_id"].to_numpy()[engaged])
        np.add.at(engagement, rows[rows >= 0], 1.0)
        users = tables.users.set_index("user_id").reindex(simulation.marketplace.tastes.user_ids)
        return cls(
            simulation=simulation,
            extended=extended,
            user_created_us=_us(users["created_at"]),
            sold_us=sold_us,
            engagement=engagement,
            start_us=_to_us(simulation.start),
            chunks=[],
        )

    def simulate_day(self, day: int, policy: ListPolicy | None) -> list[dict[str, np.ndarray]]:
        """One day: sessions arrive as in the generator; each 2-hour slot's recommendation
        sessions are answered in one policy call, then organic and recommended events are
        resolved together (the first purchase of a listing wins)."""
        source, config = self.simulation.source, self.simulation.config
        seed = (config.seed, source.seed, day)
        arrivals = np.random.default_rng([*seed, _ARRIVALS])
        organic = np.random.default_rng([*seed, _ORGANIC])
        feed = np.random.default_rng([*seed, _FEED])
        tastes = self.extended.tastes
        day_start = self.start_us + day * _US_PER_DAY
        week = (source.n_days + day) // _DAYS_PER_TASTE_STEP
        session_user, session_ts, recommended = self._sessions_of_day(
            day_start, policy is not None, arrivals
        )
        slot_us = _SLOT_HOURS * 3_600 * _US_PER_SECOND
        session_slot = (session_ts - day_start) // slot_us
        served: list[dict[str, np.ndarray]] = []
        for slot in range(24 // _SLOT_HOURS):
            in_slot = session_slot == slot
            slot_start = day_start + slot * slot_us
            n_created = int(np.searchsorted(self.extended.created_us, slot_start, side="left"))
            pool = np.flatnonzero(self.sold_us[:n_created] >= slot_start)
            parts = []
            browsing = in_slot & ~recommended
            if browsing.any() and len(pool):
                parts.append(
                    _simulate_slot(
                        source,
                        tastes,
                        self.extended.traits,
                        week,
                        session_user[browsing],
                        session_ts[browsing],
                        pool,
                        (slot_start - self.extended.created_us[pool]) / _US_PER_DAY,
                        self.engagement[pool],
                        organic,
                    )
                )
            opening = in_slot & recommended
            if opening.any() and policy is not None:
                events, sessions = self._answer_slot(
                    policy, session_user[opening], session_ts[opening], slot_start, week, feed
                )
                sessions["day"] = np.full(len(sessions["user"]), day)
                parts.append(events)
                served.append(sessions)
            if parts:
                self._resolve(parts)
        return served

    def _sessions_of_day(
        self, day_start: int, with_recommendations: bool, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The day's sessions, arriving at the generator's rates: user, time and whether
        each opens on the recommendations, in time order (without recommendations, only
        the organic ones)."""
        source, config = self.simulation.source, self.simulation.config
        tastes = self.extended.tastes
        weekday = (day_start // _US_PER_DAY + 3) % 7
        rate = source.sessions_per_user_day * tastes.activity * _WEEKDAY_SESSIONS[weekday]
        rate = np.where(self.user_created_us < day_start + _US_PER_DAY, rate, 0.0)
        session_user = np.repeat(np.arange(len(rate)), rng.poisson(rate))
        session_ts = day_start + _time_of_day(len(session_user), rng)
        joined = session_ts >= self.user_created_us[session_user]
        session_user, session_ts = session_user[joined], session_ts[joined]
        recommended = rng.random(len(session_user)) < config.recommended_share
        if not with_recommendations:
            session_user, session_ts = session_user[~recommended], session_ts[~recommended]
            recommended = recommended[~recommended]
        order = np.argsort(session_ts, kind="stable")
        return session_user[order], session_ts[order], recommended[order]

    def _answer_slot(
        self,
        policy: ListPolicy,
        users: np.ndarray,
        stamps: np.ndarray,
        slot_start: int,
        week: int,
        rng: np.random.Generator,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Ask the policy for the slot's lists, then examine and respond to them."""
        config, traits = self.simulation.config, self.extended.traits
        user_ids = [str(user) for user in self.extended.tastes.user_ids[users]]
        sold_now = self.sold_us <= slot_start
        sold = frozenset(traits.item_ids[sold_now & (self.sold_us >= self.start_us)])
        moment = pd.Timestamp(slot_start, unit="us", tz="UTC")
        lists = policy(user_ids, config.k, moment, sold)
        if len(lists) != len(user_ids):
            raise ValueError(
                f"the policy answered {len(lists)} lists for {len(user_ids)} sessions: "
                "it must answer one (possibly empty) list per user, in order"
            )
        grid = np.full((len(users), config.k), -1, dtype=np.int64)
        for row, items in enumerate(lists):
            found = self.extended.item_row.get_indexer(list(items)[: config.k])
            grid[row, : len(found)] = found
        shown = grid >= 0
        self.sold_served += int(np.count_nonzero(shown & sold_now[np.maximum(grid, 0)]))
        shown &= ~sold_now[np.maximum(grid, 0)]
        events, views, bought = _respond(
            self.extended.tastes, traits, config, week, users, stamps, grid, shown, rng
        )
        sessions = {
            "user": users,
            "ts": stamps,
            "shown": shown.sum(axis=1),
            "views": views,
            "purchases": bought,
        }
        return events, sessions

    def _resolve(self, parts: list[dict[str, np.ndarray]]) -> None:
        """Merge a slot's events; the first purchase of an unsold listing sells it, later
        purchase attempts of it fail (dropped); engagement feeds social proof."""
        events = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        purchase = np.flatnonzero(events["event"] == _PURCHASE)
        order = purchase[np.argsort(events["ts"][purchase], kind="stable")]
        items, first = np.unique(events["item"][order], return_index=True)
        winners = order[first]
        valid = events["ts"][winners] < self.sold_us[items]
        self.sold_us[items[valid]] = events["ts"][winners[valid]]
        keep = np.ones(len(events["ts"]), dtype=bool)
        keep[purchase] = False
        keep[winners[valid]] = True
        events = {key: values[keep] for key, values in events.items()}
        engaged = np.isin(events["event"], _ENGAGING)
        np.add.at(self.engagement, events["item"][engaged], 1.0)
        self.chunks.append(events)

    def result(self, sessions: list[dict[str, np.ndarray]]) -> SimulationResult:
        simulation, extended = self.simulation, self.extended
        if self.chunks:
            events = {k: np.concatenate([c[k] for c in self.chunks]) for k in self.chunks[0]}
        else:
            events = {
                "user": np.zeros(0, np.int64),
                "item": np.zeros(0, np.int64),
                "ts": np.zeros(0, np.int64),
                "event": np.zeros(0, np.int8),
            }
        order = np.lexsort((events["event"], events["ts"]))
        events = {key: values[order] for key, values in events.items()}
        end = simulation.start + pd.Timedelta(days=simulation.config.days)
        end_us = _to_us(end)
        inside = events["ts"] < end_us
        events = {key: values[inside] for key, values in events.items()}
        interactions = pd.DataFrame(
            {
                "user_id": extended.tastes.user_ids[events["user"]],
                "item_id": extended.traits.item_ids[events["item"]],
                "ts": _stamps(events["ts"]),
                "event": np.asarray(MARKETPLACE_EVENTS, dtype=object)[events["event"]],
                "weight": np.ones(len(events["ts"])),
            }
        )
        items = pd.concat(
            [simulation.marketplace.tables.items, extended.new_items], ignore_index=True
        )
        sold = (self.sold_us < end_us) & (self.sold_us < np.iinfo(np.int64).max)
        items["sold_at"] = _stamps(np.where(sold, self.sold_us, 0)).where(sold)
        return SimulationResult(
            interactions=interactions,
            items=items,
            sessions=_sessions_table(sessions, extended.tastes.user_ids),
            sold_listings_served=self.sold_served,
            start=simulation.start,
            end=end,
        )


def _sessions_table(sessions: list[dict[str, np.ndarray]], user_ids: np.ndarray) -> pd.DataFrame:
    if not sessions:
        return pd.DataFrame(
            {
                "user_id": pd.Series(dtype=object),
                "served_at": pd.Series(dtype="datetime64[us, UTC]"),
                "day": pd.Series(dtype=np.int64),
                "shown": pd.Series(dtype=np.int64),
                "views": pd.Series(dtype=np.int64),
                "purchases": pd.Series(dtype=np.int64),
            }
        )
    merged = {key: np.concatenate([part[key] for part in sessions]) for key in sessions[0]}
    return pd.DataFrame(
        {
            "user_id": user_ids[merged["user"]],
            "served_at": _stamps(merged["ts"]),
            "day": merged["day"],
            "shown": merged["shown"],
            "views": merged["views"],
            "purchases": merged["purchases"],
        }
    )


def _stamps(us: np.ndarray) -> pd.Series:
    return pd.Series(np.asarray(us, dtype=np.int64).astype("datetime64[us]")).dt.tz_localize("UTC")
