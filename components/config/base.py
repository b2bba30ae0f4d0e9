"""The building blocks every config section shares: strict frozen models and the
validated string types (durations, dates, model names).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def positive_duration(value: Any) -> str:
    """A pandas duration string above zero with a unit ('7D', '12h', '30min'), as every
    window, half-life and gap of the pipeline is read with `pd.Timedelta`."""
    import pandas as pd  # only here: the config module stays light to import

    example = "write e.g. '7D', '12h' or '30min'"
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration; {example}")
    if not re.search(r"[A-Za-z]", value):
        raise ValueError(f"{value!r} has no unit (pandas would read nanoseconds); {example}")
    try:
        positive = bool(pd.Timedelta(value) > pd.Timedelta(0))
    except ValueError:
        positive = False
    if not positive:
        raise ValueError(f"{value!r} is not a positive duration; {example}")
    return value


def calendar_date(value: Any) -> str:
    """A date or timestamp string pandas parses ('2026-01-01')."""
    import pandas as pd

    try:
        pd.Timestamp(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a date; write e.g. '2026-01-01'") from None
    return str(value)


#: Characters a registered model name may hold: it goes into `models:/<name>@<alias>` URIs
#: and the artifact store's folders, where '/' or '..' would point elsewhere.
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"


def model_name(value: Any) -> str:
    """A registry or dataset name: letters, digits, '.', '_' and '-', starting with a
    letter or digit, at most 100 characters."""
    if not isinstance(value, str) or not re.fullmatch(MODEL_NAME_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a valid name: use letters, digits, '.', '_' and '-', starting "
            "with a letter or digit, at most 100 characters (e.g. 'rewear')"
        )
    return value


Duration = Annotated[str, BeforeValidator(positive_duration)]
CalendarDate = Annotated[str, BeforeValidator(calendar_date)]
Name = Annotated[str, BeforeValidator(model_name)]
