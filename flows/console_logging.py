"""What a failed run shows on the console: one line per failure, the traceback in the log
file.

Prefect's console handler prints a failed flow's 25-30-frame traceback and repeats its
message as the flow engine's exception, the flow's final state and the failed task's state,
before the CLI's own one-line error. Here the console keeps the failed task's line (it
names the stage) and the CLI's line; every record, tracebacks included, also goes to
`REWEAR_HOME/logs/rewear.log` (and, as before, to the Prefect UI through its API handler).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect.logging.handlers import PrefectConsoleHandler

#: Console records that only repeat a failure the CLI reports in its own line, or that a
#: failed task's state cannot be stored as JSON (the stage records' serializer).
_REPEATS = (
    "Encountered exception during execution",
    "Failed to write result: Failed to serialize object of type",
)
_FLOW_RUNS = "prefect.flow_runs"
LOG_FILE_NAME = "rewear.log"


class _WithoutTraceback(logging.Formatter):
    """The console formatter's line, without the exception text (other handlers of the same
    record still get it: the record is copied, not changed)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text:
            record = logging.makeLogRecord(record.__dict__)
            record.exc_info, record.exc_text = None, None
        return self.inner.format(record)


def _not_a_repeat(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if message.startswith(_REPEATS):
        return False
    return not (record.name == _FLOW_RUNS and message.startswith("Finished in state Failed"))


def quiet_failures_on_console(log_dir: Path) -> Path:
    """Trim Prefect's console output of failures to single lines and keep everything, with
    tracebacks, in `log_dir/rewear.log`; returns that file. Idempotent."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(
            handler.formatter, _WithoutTraceback
        ):
            handler.setFormatter(_WithoutTraceback(handler.formatter or logging.Formatter()))
            handler.addFilter(_not_a_repeat)
    path = Path(log_dir) / LOG_FILE_NAME
    if not any(
        isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve()
        for h in root.handlers
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(
            logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s")
        )
        root.addHandler(handler)
    return path
