"""The components' own progress (encoder epochs, index builds, refits) on the console of a
flow's process."""

from __future__ import annotations

import logging
import sys
from typing import Any

from prefect.settings import get_current_settings

#: The components' own progress (encoder epochs, index builds, refits) goes to the console
#: from here; PREFECT_LOGGING_EXTRA_LOGGERS=components (set by the CLI and the deployment
#: set-up) also sends it to the flow run's logs.
PROGRESS_LOGGER = "components"


class _ProgressHandler(logging.StreamHandler):
    """The console handler `show_component_progress` adds (found again by its type). It
    writes to whatever `sys.stderr` is when a record comes, not the stream of the moment
    it was added: a caller that swaps stderr (a test runner, a notebook) and closes the
    old one would otherwise get "Logging error" for every record after."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """StreamHandler's constructor sets one; it is read at each record instead."""


def show_component_progress() -> None:
    """INFO records of the `components` loggers on the console, once per process (not at
    all when Prefect's extra-loggers setting already gave them its console handler)."""
    progress = logging.getLogger(PROGRESS_LOGGER)
    progress.setLevel(logging.INFO)
    if PROGRESS_LOGGER in (get_current_settings().logging.extra_loggers or []):
        return  # Prefect's logging set-up gives it its console and API handlers
    if not any(isinstance(handler, logging.StreamHandler) for handler in progress.handlers):
        handler = _ProgressHandler()
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s", "%H:%M:%S"
            )
        )
        progress.addHandler(handler)
