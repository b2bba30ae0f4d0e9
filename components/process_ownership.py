"""The identity of the process that owns a tracked run, and whether that process is
certainly gone (so a killed run's leftovers can be closed by the next one)."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19]


def process_owner() -> str:
    """Who owns a tracked run: host, boot, pid and the pid's start time, so a later process
    can tell whether the owner still runs (a reused pid has another start time)."""
    pid = os.getpid()
    return f"{socket.gethostname()} {_boot_id()} {pid} {_start_ticks(pid) or 'unknown'}"


def owner_is_gone(owner: str) -> bool:
    """True when the process recorded by `process_owner()` certainly no longer runs: same
    host, and another boot, or no such pid, or a pid started at another time. A process on
    another host is never judged gone (it may still run)."""
    try:
        host, boot, pid_text, ticks = owner.split(" ")
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    if boot != "unknown" and boot != _boot_id():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    current = _start_ticks(pid)
    if current is None or ticks == "unknown":
        return False
    return current != ticks or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
