#!/usr/bin/env python3
"""Set up (or reuse) the virtual environment, then run the demo or the tests.

    python3 scripts/dev.py demo   # retrain on the synthetic marketplace, register a model,
                                  # then run champion vs challenger on its simulated traffic
    python3 scripts/dev.py test   # the whole test suite (what CI runs)
    python3 scripts/dev.py test --quick   # all but the end-to-end retrains (`slow`)
    python3 scripts/dev.py lint   # ruff check, ruff format --check, no type-ignore comments

Only the Python standard library is used here, so it runs on a fresh machine.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("REWEAR_VENV", ROOT / ".venv"))
TORCH = "torch==2.13.0"  # the CPU build; a plain `torch` would pull a multi-GB CUDA build
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _run(*command: str | Path) -> None:
    print("+", " ".join(str(part) for part in command), flush=True)
    subprocess.run([str(part) for part in command], cwd=ROOT, check=True)


def ensure_environment() -> None:
    """Create the venv once; reinstall the project only when pyproject.toml changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script runs before the venv exists
        sys.exit(f"rewear needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    python = BIN / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / ".rewear-installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    _run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(python, "-m", "pip", "install", "--quiet", TORCH)
    _run(python, "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    stamp.write_text(wanted)


#: Where our Python lives (what lint reads).
SOURCES = ("components", "flows", "tests", "bench", "scripts", "deployments")


def lint() -> int:
    """ruff's checks and formatting, and no type-ignore comment: no type checker runs here, so
    such a comment would silence nothing and claim a check that does not exist."""
    ruff = str(BIN / "ruff")
    failed = subprocess.run([ruff, "check", "."], cwd=ROOT).returncode
    failed |= subprocess.run([ruff, "format", "--check", "."], cwd=ROOT).returncode
    marker = "# type: " + "ignore"  # split, so this file does not match itself
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if marker in line:
                    print(f"{path.relative_to(ROOT)}:{number}: '{marker}' with no type checker")
                    failed = 1
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "setup", "lint"):
        print(__doc__)
        return 2
    ensure_environment()
    command, rest = argv[0], argv[1:]
    if command == "setup":
        return 0
    if command == "lint":
        return lint()
    if command == "demo":
        # The retrain, then champion against challenger on the simulated market's traffic
        # (the first time, both are the one new version: an A/A run of the whole loop).
        args = rest or ["--config", "configs/synthetic.yaml"]
        rewear = str(BIN / "rewear")
        failed = subprocess.run([rewear, "retrain", *args], cwd=ROOT).returncode
        if failed:
            return failed
        return subprocess.run([rewear, "experiment", "simulate", *args], cwd=ROOT).returncode
    pytest = [str(BIN / "python"), "-m", "pytest"]
    if "--quick" in rest:
        # The inner loop: every test but the end-to-end retrains marked `slow`.
        rest = ["-m", "not slow", *[arg for arg in rest if arg != "--quick"]]
    return subprocess.run([*pytest, *rest], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
