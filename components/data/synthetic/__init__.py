"""The built-in synthetic second-hand fashion marketplace: the demo's default data.

Why synthetic: the ground truth (each user's latent tastes) is known, so an oracle gives an
upper bound for every model, and the data carry what the pipeline must handle on a real
marketplace: one-of-a-kind listings that sell once within days, long-tailed sellers, users
and listings arriving all the time, and tastes that drift. Everything is drawn from one
seeded numpy Generator, so a config always gives identical tables.

How events arise: the period is simulated day by day and, inside a day, in two-hour slots
(vectorised over the slot's sessions). Each session has an intent category drawn from the
user's current category preferences and samples listings of it, among those the slot's
feed surfaces (the available listings of that category, or `feed_depth` of them drawn by
freshness, popularity and appeal when more are live, so that a session's cost does not grow
with the catalogue), with probability proportional to
exp(taste affinity) x popularity boost (social proof) x freshness decay. Each view may
escalate to like, save, add_to_bag or purchase with probabilities increasing with the
affinity; a deeper event always comes seconds to minutes after its view. The first
purchase of a listing ends it: `sold_at` is that purchase's timestamp and no event on the
listing comes after it; listings that never sell stay available (nothing is delisted).
Every interaction has weight 1.0: the strength of a signal is its `event` type, and how
much each type counts is a modelling choice (e.g. PopularityConfig.event_weights).

The modules: `vocabulary` (the catalogue's words and shares), `users` (who joins, their
tastes and the affinity they give a listing), `listings` (supply, attributes, prices,
titles), `sessions` (the day-by-day simulation), `escalation` (a view's deeper events),
`clock` (microsecond time) and `marketplace` (all of it into the canonical tables).
"""

from components.data.synthetic.listings import ItemTraits, resolve_supply
from components.data.synthetic.marketplace import (
    SyntheticMarketplace,
    generate_marketplace,
    taste_scores,
)
from components.data.synthetic.users import UserTastes
from components.data.synthetic.vocabulary import (
    BRAND_NAMES,
    BRANDS,
    CATEGORIES,
    CATEGORY_NAMES,
    COLOURS,
    CONDITIONS,
    COUNTRIES,
    NO_BRAND,
    SIZE_SYSTEMS,
    SIZE_TOKENS,
    STYLE_NAMES,
    STYLES,
    TIER_LOG_PRICE,
)

__all__ = [
    "BRANDS",
    "BRAND_NAMES",
    "CATEGORIES",
    "CATEGORY_NAMES",
    "COLOURS",
    "CONDITIONS",
    "COUNTRIES",
    "NO_BRAND",
    "SIZE_SYSTEMS",
    "SIZE_TOKENS",
    "STYLES",
    "STYLE_NAMES",
    "TIER_LOG_PRICE",
    "ItemTraits",
    "SyntheticMarketplace",
    "UserTastes",
    "generate_marketplace",
    "resolve_supply",
    "taste_scores",
]
