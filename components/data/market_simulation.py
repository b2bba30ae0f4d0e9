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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config import MarketSimulationConfig, SyntheticSourceConfig
from components.data.schema import MARKETPLACE_EVENTS
from components.data.synthetic import (
    _AFFINITY_CENTRE,
    _DAYS_PER_TASTE_STEP,
    _EVENT_CODES,
    _SLOT_HOURS,
    _US_PER_DAY,
    _US_PER_SECOND,
    _WEEKDAY_SESSIONS,
    ItemTraits,
    SyntheticMarketplace,
    UserTastes,
    _draw_listings,
    _escalate,
    _items_table,
    _simulate_slot,
    _supply,
    _time_of_day,
    _to_us,
    _user_item_affinity,
    _utc,
    generate_marketplace,
    resolve_supply,
)

_PURCHASE = _EVENT_CODES["purchase"]
_ENGAGING = (_EVENT_CODES["like"], _EVENT_CODES["save"], _EVENT_CODES["add_to_bag"])
#: Stream purposes of the per-day generators (common random numbers across policies).
_ARRIVALS, _ORGANIC, _FEED, _LISTINGS = range(4)


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


# --- The continued market ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Extended:
    """Tastes and listings covering the generated period and the simulated one."""

    tastes: UserTastes
    traits: ItemTraits
    created_us: np.ndarray
    new_items: pd.DataFrame
    item_row: pd.Index


def _extend(
    marketplace: SyntheticMarketplace, source: SyntheticSourceConfig, config: MarketSimulationConfig
) -> _Extended:
    """More weeks of taste drift and more days of new listings, drawn from streams of the
    simulation's own seed (the generated tables stay as they were)."""
    tastes, traits = marketplace.tastes, marketplace.item_traits
    end_us = _to_us(_utc(source.start)) + source.n_days * _US_PER_DAY
    total_days = source.n_days + config.days
    weeks = (total_days + _DAYS_PER_TASTE_STEP - 1) // _DAYS_PER_TASTE_STEP
    rng = np.random.default_rng([config.seed, source.seed, 91])
    weekly = list(tastes.category_log_pref)
    while len(weekly) < weeks:
        step = rng.normal(0.0, source.taste_drift, weekly[-1].shape).astype(np.float32)
        drifted = weekly[-1] + step
        weekly.append(np.maximum(drifted - drifted.max(axis=1, keepdims=True), -5.0))
    tastes = UserTastes(**{**tastes.__dict__, "category_log_pref": np.stack(weekly)})

    listing_rng = np.random.default_rng([config.seed, source.seed, _LISTINGS])
    arrivals = source.model_copy(update={"n_days": config.days, "initial_listings": 0})
    items, new_traits = _draw_listings(arrivals, _supply(arrivals), end_us, listing_rng)
    n_old = len(traits.item_ids)
    width = max(6, len(str(n_old + len(items))))
    new_ids = np.array([f"i{n_old + i:0{width}d}" for i in range(len(items))], dtype=object)
    items["item_id"] = new_ids
    merged = ItemTraits(
        **{
            name: np.concatenate([getattr(traits, name), getattr(new_traits, name)])
            for name in traits.__dict__
            if name != "item_ids"
        },
        item_ids=np.concatenate([traits.item_ids, new_ids]),
    )
    old_created = _us(marketplace.tables.items["created_at"])
    created = np.concatenate([old_created, items["created_us"].to_numpy(np.int64)])
    new_table = _items_table(items, new_traits, np.full(len(items), -1))
    return _Extended(tastes, merged, created, new_table, pd.Index(merged.item_ids))


def _us(stamps: pd.Series) -> np.ndarray:
    """int64 microseconds since the epoch of a UTC timestamp column."""
    return stamps.dt.tz_convert("UTC").astype("datetime64[us, UTC]").astype("int64").to_numpy()


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
        weekday = (day_start // _US_PER_DAY + 3) % 7
        rate = source.sessions_per_user_day * tastes.activity * _WEEKDAY_SESSIONS[weekday]
        rate = np.where(self.user_created_us < day_start + _US_PER_DAY, rate, 0.0)
        session_user = np.repeat(np.arange(len(rate)), arrivals.poisson(rate))
        session_ts = day_start + _time_of_day(len(session_user), arrivals)
        joined = session_ts >= self.user_created_us[session_user]
        session_user, session_ts = session_user[joined], session_ts[joined]
        recommended = arrivals.random(len(session_user)) < config.recommended_share
        if policy is None:
            session_user, session_ts = session_user[~recommended], session_ts[~recommended]
            recommended = recommended[~recommended]
        order = np.argsort(session_ts, kind="stable")
        session_user, session_ts = session_user[order], session_ts[order]
        recommended = recommended[order]
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


# --- Examination and response -------------------------------------------------------


def _examination(config: MarketSimulationConfig) -> np.ndarray:
    """Probability that slot r (0-based here) is examined under the position-based model."""
    return (np.arange(1, config.k + 1, dtype=np.float64)) ** -config.examination_decay


def _click_probability(affinity: np.ndarray, config: MarketSimulationConfig) -> np.ndarray:
    logit = config.click_intercept + config.click_slope * (affinity - _AFFINITY_CENTRE)
    return 1.0 / (1.0 + np.exp(-logit))


def _affinities(
    tastes: UserTastes, traits: ItemTraits, week: int, users: np.ndarray, grid: np.ndarray
) -> np.ndarray:
    """True affinity of each session's user for each listing of its list (-inf: empty)."""
    affinity = np.full(grid.shape, -np.inf)
    for row, user in enumerate(users):
        columns = grid[row]
        present = columns >= 0
        if present.any():
            taste = _user_item_affinity(tastes, week, np.array([user]), traits, columns[present])
            affinity[row, present] = taste[0] + traits.appeal[columns[present]]
    return affinity


def _respond(
    tastes: UserTastes,
    traits: ItemTraits,
    config: MarketSimulationConfig,
    week: int,
    users: np.ndarray,
    stamps: np.ndarray,
    grid: np.ndarray,
    shown: np.ndarray,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Sessions go down their lists slot by slot: examined slots are clicked (a view) with
    the click model's probability, and views escalate as in the generator. Returns the
    events, and views and purchases per session."""
    n_sessions, k = grid.shape
    affinity = _affinities(tastes, traits, week, users, grid)
    exam = _examination(config)
    active = np.ones(n_sessions, dtype=bool)
    clock = stamps.astype(np.int64).copy()
    views = np.zeros(n_sessions, dtype=np.int64)
    bought = np.zeros(n_sessions, dtype=np.int64)
    parts = []
    for slot in range(k):
        draws = rng.random((3, n_sessions))
        if config.position_model == "cascade":
            examined = active & shown[:, slot]
        else:
            examined = shown[:, slot] & (draws[0] < exam[slot])
        clock += (rng.exponential(8.0, n_sessions) * _US_PER_SECOND).astype(np.int64)
        clicked = examined & (draws[1] < _click_probability(affinity[:, slot], config))
        rows = np.flatnonzero(clicked)
        if len(rows):
            clock[rows] += (rng.exponential(40.0, len(rows)) * _US_PER_SECOND).astype(np.int64)
            # Escalated by session row, then mapped back to the users.
            part = _escalate(rows, grid[rows, slot], clock[rows], affinity[rows, slot], rng)
            buyers = np.zeros(n_sessions, dtype=bool)
            buyers[part["user"][part["event"] == _PURCHASE]] = True
            part["user"] = users[part["user"]]
            bought += buyers
            views[rows] += 1
            parts.append(part)
            if config.position_model == "cascade":
                active &= ~buyers
        if config.position_model == "cascade":
            active &= draws[2] < config.cascade_continue
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return (
            {"user": empty, "item": empty, "ts": empty, "event": empty.astype(np.int8)},
            views,
            bought,
        )
    events = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    events["user"] = events["user"].astype(np.int64)
    events["item"] = events["item"].astype(np.int64)
    return events, views, bought


def _expected_list_purchases(
    tastes: UserTastes,
    traits: ItemTraits,
    config: MarketSimulationConfig,
    user_ids: Sequence[str],
    lists: Sequence[Sequence[str]],
    as_of: pd.Timestamp,
) -> np.ndarray:
    """Sum over slots of P(examined) x P(click) x P(purchase | view) (the cascade's
    examination being the chance to reach the slot without a purchase before it)."""
    per_slot = _slot_purchase_probabilities(tastes, traits, config, user_ids, lists, as_of)
    if config.position_model == "cascade":
        survive = np.cumprod(1.0 - per_slot, axis=1) / np.maximum(1.0 - per_slot, 1e-12)
        reach = survive * config.cascade_continue ** np.arange(config.k)[None, :]
        return (reach * per_slot).sum(axis=1)
    return (per_slot * _examination(config)[None, :]).sum(axis=1)


def _slot_purchase_probabilities(
    tastes: UserTastes,
    traits: ItemTraits,
    config: MarketSimulationConfig,
    user_ids: Sequence[str],
    lists: Sequence[Sequence[str]],
    as_of: pd.Timestamp,
) -> np.ndarray:
    """P(click) x P(purchase | view) of each of the first config.k slots of each list."""
    from components.data.synthetic import _ESCALATION

    users = pd.Index(tastes.user_ids).get_indexer(list(user_ids))
    if (users < 0).any():
        raise KeyError(f"unknown user ids {list(np.asarray(user_ids)[users < 0][:5])}")
    week = tastes.week_at(as_of)
    item_row = pd.Index(traits.item_ids)
    grid = np.full((len(users), config.k), -1, dtype=np.int64)
    for row, items in enumerate(lists):
        found = item_row.get_indexer(list(items)[: config.k])
        grid[row, : len(found)] = found
    affinity = _affinities(tastes, traits, week, users, grid)
    intercept, slope = _ESCALATION["buy"]
    buy = 1.0 / (1.0 + np.exp(-(intercept + slope * (affinity - _AFFINITY_CENTRE))))
    return np.where(grid >= 0, _click_probability(affinity, config) * buy, 0.0)


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
