"""Putting this process's environment variables back as they were (after a library that
changes `os.environ` and never undoes it)."""

from __future__ import annotations

import os


def restore_environment(saved: dict[str, str]) -> None:
    """Put os.environ back to `saved`: variables added since are removed, changed ones reset."""
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
