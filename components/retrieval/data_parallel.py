"""Data-parallel training on CPU: N spawned processes in one `torch.distributed` gloo group.

`run_in_processes(fn, args, n)` starts n processes (torch.multiprocessing, spawn), joins
them in a gloo group on 127.0.0.1 and calls `fn(ranks, *args)` in each; rank 0's return
value comes back to the caller. Each rank runs torch on `cpus // n` threads. What a
trainer needs between its ranks is on `Ranks`: one all-reduce per optimiser step that
averages the gradients weighted by each rank's examples (and the loss; and agrees on the
deadline), and rank 0's decisions broadcast to all.

Why by hand and not DistributedDataParallel: the two-tower's loss calls its towers, not
the model's `forward` (DDP's reducer is armed in `forward`), a rank's part of a batch may
be empty or smaller than the others' (DDP averages unweighted and needs `join()` for
uneven inputs), and parameters without a gradient in a step (Adam skips them) must stay
without one: one flat all-reduce per step does all that.

Failures: an exception in a rank ends that rank; the parent then stops the others and
raises `DataParallelError` with the rank's traceback (no rank waits on a dead peer: the
parent kills them), and the ranks die with the parent (PR_SET_PDEATHSIG with SIGKILL,
Linux: torch's own SIGINT waits until a rank is back from C code, e.g. a collective).
`timeout_s` bounds the whole run, `collective_timeout_s` the gloo rendezvous and every
collective. Rank 0 logs through the parent's loggers (a queue), the other ranks' warnings
and errors too.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from torch import nn

from components.child_processes import _die_with_parent, free_local_port

logger = logging.getLogger(__name__)

#: Bounds the gloo rendezvous and each collective (rank 0's validation between epochs
#: included, while the other ranks wait in a broadcast).
COLLECTIVE_TIMEOUT_S = 600.0


class DataParallelError(RuntimeError):
    """A rank failed, died or did not finish in time; the message names the rank and why."""


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group, and the collectives a data-parallel step needs."""

    rank: int
    size: int
    #: torch threads of this rank (`cpus // size`) and of the whole machine.
    threads: int
    cpus: int

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def broadcast_parameters(self, model: nn.Module) -> None:
        """Every rank starts from rank 0's weights (same seed, but do not rely on it)."""
        with torch.no_grad():
            for parameter in model.parameters():
                dist.broadcast(parameter.data, src=0)

    def average_gradients(
        self, model: nn.Module, loss: torch.Tensor | None, weight: int, late: bool
    ) -> tuple[bool, float]:
        """One all-reduce per step: each parameter's gradient becomes the mean of the
        ranks' gradients weighted by `weight` (a rank's examples; the ranks without a
        `loss` count for nothing), so it is the gradient of the whole batch's mean loss. A
        parameter no rank gave a gradient keeps none (Adam skips it, as in one process).
        Returns (any rank past the deadline, the weighted mean loss)."""
        weight = weight if loss is not None else 0
        parameters = list(model.parameters())
        parts = [
            _dense(p.grad).reshape(-1) * weight if p.grad is not None else torch.zeros(p.numel())
            for p in parameters
        ]
        tail = [float(p.grad is not None) for p in parameters]
        tail += [float(weight), 0.0 if loss is None else float(loss.detach()) * weight]
        tail += [float(late)]
        buffer = torch.cat([*parts, torch.tensor(tail, dtype=torch.float32)])
        dist.all_reduce(buffer)
        n_parameters = len(parameters)
        flags = buffer[-(n_parameters + 3) : -3]
        total_weight, loss_sum, any_late = (float(v) for v in buffer[-3:])
        offset = 0
        for parameter, flag in zip(parameters, flags, strict=True):
            size = parameter.numel()
            if flag > 0 and total_weight > 0:
                gradient = buffer[offset : offset + size] / total_weight
                parameter.grad = gradient.view_as(parameter)
            else:
                parameter.grad = None
            offset += size
        return any_late > 0, loss_sum / max(total_weight, 1.0)

    def decide(self, value: bool) -> bool:
        """Rank 0's `value`, on every rank (early stopping, the deadline)."""
        flag = torch.tensor([float(value)])
        dist.broadcast(flag, src=0)
        return bool(flag.item() > 0)

    def per_rank(self, count: int) -> list[int]:
        """`count` of every rank, in rank order (e.g. the examples each one trained on)."""
        counts = torch.zeros(self.size, dtype=torch.float64)
        counts[self.rank] = count
        dist.all_reduce(counts)
        return [round(float(c)) for c in counts]

    @contextlib.contextmanager
    def all_threads(self) -> Iterator[None]:
        """Rank 0 alone works (the others wait in a collective): give it every CPU."""
        torch.set_num_threads(self.cpus)
        try:
            yield
        finally:
            torch.set_num_threads(self.threads)


def run_in_processes(
    fn: Callable[..., Any],
    args: Sequence[Any],
    processes: int,
    *,
    timeout_s: float,
    what: str,
    log_name: str = __name__,
    collective_timeout_s: float = COLLECTIVE_TIMEOUT_S,
) -> Any:
    """`fn(ranks, *args)` in `processes` spawned ranks of a gloo group; rank 0's return
    value (`fn` and `args` must pickle: a module-level function). Raises DataParallelError
    when a rank fails, dies or the run exceeds `timeout_s`; `what` names the work in it.
    The ranks log at the level the parent's `log_name` logger (or its root) would."""
    if multiprocessing.current_process().daemon:
        raise DataParallelError(
            f"{what}: this process is daemonic and may not start processes (a Dask worker: "
            "start the workers with DASK_DISTRIBUTED__WORKER__DAEMON=False), or train in "
            "one process (model.two_tower.processes: 1, REWEAR_ENCODER_PROCESSES=1)"
        )
    context = multiprocessing.get_context("spawn")
    logs = context.Queue()
    listener = logging.handlers.QueueListener(logs, _ParentLoggers())
    listener.start()
    try:
        with tempfile.TemporaryDirectory(prefix="rewear-ranks-") as folder:
            result = Path(folder) / "rank0.pt"
            spawned = torch_mp.start_processes(
                _rank_main,
                args=(
                    fn,
                    tuple(args),
                    os.getpid(),
                    processes,
                    free_local_port(),
                    str(result),
                    logs,
                    min(
                        logging.getLogger().getEffectiveLevel(),
                        logging.getLogger(log_name).getEffectiveLevel(),
                    ),
                    collective_timeout_s,
                ),
                nprocs=processes,
                join=False,
                start_method="spawn",
            )
            _join(spawned, timeout_s, what)
            if not result.exists():
                raise DataParallelError(f"{what}: rank 0 finished without a result")
            return torch.load(result, weights_only=False)
    finally:
        listener.stop()
        logs.close()


def _join(spawned: Any, timeout_s: float, what: str) -> None:
    """Wait for every rank; a failed or late one stops them all and raises."""
    end = time.monotonic() + timeout_s
    try:
        while not spawned.join(timeout=1.0, grace_period=5.0):
            if time.monotonic() > end:
                raise DataParallelError(
                    f"{what}: the ranks did not finish within {timeout_s:.0f} s; stopped them"
                )
    except torch_mp.ProcessRaisedException as error:
        raise _failure(spawned, error.error_index, str(error), what) from None
    except torch_mp.ProcessExitedException as error:
        raise DataParallelError(f"{what}: rank {error.error_index} died: {error}") from None
    finally:
        for process in spawned.processes:
            if process.is_alive():
                process.kill()
            process.join()


def _failure(spawned: Any, first: int, message: str, what: str) -> DataParallelError:
    """The error of the rank that failed first in fact: when a rank raises, its peers
    waiting in a collective fail too ("Connection reset by peer"), and one of them may be
    the first the parent sees. Every failed rank's traceback is in `spawned.error_files`."""
    failed: dict[int, str] = {}
    for rank, path in enumerate(spawned.error_files):
        with contextlib.suppress(OSError, EOFError, pickle.UnpicklingError):
            failed[rank] = str(pickle.loads(Path(path).read_bytes()))
    failed.setdefault(first, message)
    causes = [rank for rank, text in failed.items() if _GLOO_PEER_LOST not in text]
    rank = min(causes) if causes else first
    others = sorted(set(failed) - {rank})
    also = f"\n(then rank(s) {others} failed too: a peer was gone)" if others else ""
    return DataParallelError(f"{what}: rank {rank} failed:\n{failed[rank]}{also}")


#: Where gloo's error says a peer's connection went away (the peer failed first).
_GLOO_PEER_LOST = "gloo/transport/"


def _rank_main(
    rank: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    parent: int,
    size: int,
    port: int,
    result: str,
    logs: Any,
    level: int,
    collective_timeout_s: float,
) -> None:
    """One rank: logging to the parent, threads, the gloo group, `fn`, rank 0's result.
    It dies with the parent (Linux): a killed task leaves no rank training on."""
    _die_with_parent(parent)
    handler = logging.handlers.QueueHandler(logs)
    handler.setLevel(level if rank == 0 else max(level, logging.WARNING))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    cpus = available_cpus()
    threads = max(1, cpus // size)
    torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=size,
        timeout=timedelta(seconds=collective_timeout_s),
    )
    try:
        value = fn(Ranks(rank=rank, size=size, threads=threads, cpus=cpus), *args)
        if rank == 0:
            partial = Path(f"{result}.partial")
            torch.save(value, partial)
            partial.replace(result)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Done and the result saved: skip the interpreter's teardown (~2 s of torch's and
    # pandas' modules and threads per phase), once the log records have left.
    handler.close()
    logs.close()
    logs.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _ParentLoggers(logging.Handler):
    """Hands each rank's record to the parent's logger of the same name (its handlers,
    e.g. a flow run's, see it as if the parent had logged it)."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(record.name)
        if target.isEnabledFor(record.levelno):
            target.handle(record)


def _dense(gradient: torch.Tensor) -> torch.Tensor:
    """A large id table's sparse gradient (the rows a batch touched) travels dense in the
    one flat all-reduce buffer; the optimiser takes the average back as sparse."""
    return gradient.to_dense() if gradient.is_sparse else gradient
