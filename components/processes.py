"""What the flows' orchestration needs from the project, without Prefect: the task runner
choice (environment settings), fingerprints of the inputs that task caching keys on, and
the process bookkeeping that keeps a killed run from leaking (a helper process that dies
with its parent, the identity of the process that owns a tracked run).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from components.config import (
    FixedSplitSourceConfig,
    InteractionsFileSourceConfig,
    MovieLens100kSourceConfig,
    SourceConfig,
)
from components.store import fingerprint_files, hash_json

COMPONENTS_DIR = Path(__file__).resolve().parent


class OrchestrationSettings(BaseSettings):
    """How flows run their tasks: `REWEAR_TASK_RUNNER=thread_pool` (default) or `dask`;
    with dask, `REWEAR_DASK_ADDRESS=tcp://scheduler:8786` uses an existing cluster, and
    without it a local cluster of `REWEAR_DASK_WORKERS` processes is started per run."""

    model_config = SettingsConfigDict(env_prefix="REWEAR_", frozen=True, extra="ignore")

    task_runner: Literal["thread_pool", "dask"] = "thread_pool"
    #: Thread-pool size (null: Prefect's default).
    max_workers: int | None = Field(None, ge=1)
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1)
    dask_threads_per_worker: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _address_needs_dask(self) -> OrchestrationSettings:
        if self.dask_address and self.task_runner != "dask":
            raise ValueError(
                "REWEAR_DASK_ADDRESS is set but REWEAR_TASK_RUNNER is "
                f"{self.task_runner!r}: set REWEAR_TASK_RUNNER=dask, or unset the address"
            )
        return self


def source_paths(source: SourceConfig) -> list[Path]:
    """The files or folders a source reads (none for the synthetic generator, whose
    config alone determines its data)."""
    if isinstance(source, InteractionsFileSourceConfig):
        return [p for p in (source.interactions, source.items, source.users) if p is not None]
    if isinstance(source, MovieLens100kSourceConfig | FixedSplitSourceConfig):
        return [source.path]
    return []


def source_fingerprint(source: SourceConfig) -> str:
    """Changes when the source's data may have changed (a file rewritten, appended to,
    replaced): what the ingest step's cache key adds to the config."""
    return fingerprint_files(source_paths(source))


_code_fingerprint: str | None = None


def code_fingerprint() -> str:
    """Hash of the `components` package's source: a cached stage result is reused only by
    the code that produced it (a task's own source is a thin wrapper, not the ML)."""
    global _code_fingerprint
    if _code_fingerprint is None:
        files = sorted(COMPONENTS_DIR.rglob("*.py"))
        _code_fingerprint = hash_json(
            [[str(f.relative_to(COMPONENTS_DIR)), f.read_text()] for f in files]
        )
    return _code_fingerprint


#: Linux prctl option: the signal a process gets when the thread that started it exits.
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """In the child, before exec: ask the kernel for SIGKILL when the parent dies (Linux),
    and exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def start_process_dying_with_parent(
    args: Sequence[str], env: Mapping[str, str] | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """Start a helper process (e.g. a local Prefect server) that does not outlive this one,
    even when this one is SIGKILLed: on Linux the kernel kills it (PR_SET_PDEATHSIG); on
    other systems the caller's normal exit must stop it. Call from the main thread (the
    signal fires when the starting thread ends). `popen`: more `subprocess.Popen` arguments
    (stdout, cwd, user: the death signal is asked for after the switch of user, which would
    otherwise clear it)."""
    parent = os.getpid()
    return subprocess.Popen(
        list(args),
        env=None if env is None else dict(env),
        preexec_fn=lambda: _die_with_parent(parent),
        **popen,
    )


def free_local_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def restore_environment(saved: dict[str, str]) -> None:
    """Put os.environ back to `saved`: variables added since are removed, changed ones reset."""
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def return_freed_memory() -> None:
    """Hand the heap memory freed so far back to the operating system (glibc's
    `malloc_trim`). A stage's large temporaries (score blocks, Gram matrices, candidate
    tables) are freed when it ends, but glibc keeps most of the pages for reuse, so the
    flow's resident memory stays at its highest stage's and the next stage's peak lands on
    top of it. Does nothing where glibc is not the allocator."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return
