"""The exposure log's columns: one row per served slot of every answered request.

One schema for every sink (the Parquet dataset, the PostgreSQL table) and every reader
(attribution, the readout, off-policy estimators), so a row means the same wherever it is.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

#: `variant` of answers outside any experiment (the champion serving alone).
NO_EXPERIMENT = "none"
#: Variants of the two arms, and of an interleaved answer (each slot then has a `team`).
CONTROL = "control"
TREATMENT = "treatment"
INTERLEAVED = "interleaved"
#: Logging policies: the arm's own ranked list, or team-draft interleaving of both arms'
#: (Plackett-Luce exploration: components.experiments.exploration.PLACKETT_LUCE).
DETERMINISTIC = "deterministic"
TEAM_DRAFT = "team_draft"
#: Unit kinds: a known user id, or a session key for anonymous requests.
USER_UNIT = "user"
SESSION_UNIT = "session"

EXPOSURE_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("served_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("experiment_id", pa.string(), nullable=False),
        pa.field("unit_id", pa.string(), nullable=False),
        pa.field("unit_kind", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("source", pa.string()),
        #: The arm credited with the slot under interleaving (null otherwise).
        pa.field("team", pa.string()),
        pa.field("model_name", pa.string(), nullable=False),
        #: The registered version that produced the slot (the team's, when interleaving).
        pa.field("model_version", pa.string(), nullable=False),
        #: How the list was chosen (DETERMINISTIC, TEAM_DRAFT, ...).
        pa.field("policy", pa.string(), nullable=False),
        #: Probability that the logging policy put this item in this slot (1.0 for a
        #: deterministic list): what off-policy estimators divide by.
        pa.field("propensity", pa.float64(), nullable=False),
        #: Probability of the list's first `position` slots exactly as served (the cascade
        #: estimators'); null in logs written before it existed.
        pa.field("prefix_propensity", pa.float64()),
        #: Probability that the logging policy showed this item in any slot of the list (the
        #: position-based estimators'); null in logs written before it existed.
        pa.field("inclusion_propensity", pa.float64()),
        #: The item's rank in the arm's own list (what an explored list was drawn from).
        pa.field("candidate_rank", pa.int32()),
    ]
)
EXPOSURE_COLUMNS = tuple(EXPOSURE_SCHEMA.names)
#: Columns every logged row must carry (the others may be absent: written as nulls).
REQUIRED_EXPOSURE_COLUMNS = tuple(field.name for field in EXPOSURE_SCHEMA if not field.nullable)


def exposure_frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow table of EXPOSURE_SCHEMA as pandas, one dtype per column whatever the rows
    (the nullable integer `candidate_rank` as Int32, not float when it holds nulls)."""
    frame = table.to_pandas()
    frame["candidate_rank"] = frame["candidate_rank"].astype("Int32")
    return frame


def empty_exposures() -> pd.DataFrame:
    """An exposure frame with no rows and the schema's dtypes."""
    return exposure_frame(EXPOSURE_SCHEMA.empty_table())
