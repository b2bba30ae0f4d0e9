"""Helper processes that do not outlive the process that started them (a local Prefect
server, data-parallel ranks), and a free local port for them to listen on."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

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
