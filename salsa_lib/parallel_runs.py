"""Independent training runs (ensemble members, stage-2 students) side by side on the CPU's cores.

A small model's training step does not keep two cores busy: measured on a 2-core machine, two
processes with one thread each train 1.3 times as many steps per second as one process with two.
Each run seeds itself and lives in its own folder, so where it ran changes nothing but float
rounding. When fewer runs are left than workers (the last of 3 members on 2 cores), a run's
training takes the idle workers' cores too (``share_cores``, called at every step): one run alone
trains 1.6 times faster with two threads than with one. On a GPU, or with DDP, runs stay one after
the other in this process.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence

import torch

from salsa_lib import precision

PR_SET_PDEATHSIG = 1  # Linux prctl: a signal for this process when its parent dies

# Set in each worker process by ``_start_worker``: the pool's count of runs in progress, and its cores
_running: Any = None
_pool_cores = 1


def available_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def plan_workers(config, n_runs: int, cores: int | None = None) -> tuple[int, int]:
    """(worker processes, threads each) for ``n_runs`` runs of a training ``config``.

    ``parallel_runs``: 0 asks for one process per core (at most one per run), 1 keeps the runs in
    this process. A GPU or DDP run always stays in this process.
    """
    cores = available_cores() if cores is None else cores
    if precision.uses_gpu(config.accelerator) or config.devices > 1 or config.num_nodes > 1:
        return 1, cores
    wanted = cores if config.parallel_runs == 0 else config.parallel_runs
    workers = max(1, min(n_runs, wanted))
    return workers, max(1, cores // workers)


def _start_worker(threads: int, running: Any, cores: int) -> None:
    """Each worker: its share of the cores, and killed with its parent (a killed notebook leaves no
    orphan still writing into a run folder that a rerun resumes)."""
    global _running, _pool_cores
    _running, _pool_cores = running, cores
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def share_cores() -> None:
    """In a worker of ``run_all``: train on the pool's cores divided by the runs in progress.

    Outside a worker it does nothing. Cheap enough for every step: one read of a shared integer.
    """
    if _running is None:
        return
    threads = max(1, _pool_cores // max(1, _running.value))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)


def _counted(job: Callable[..., Any], *args: Any) -> Any:
    """``job(*args)`` in a worker, counted among the pool's runs in progress while it runs."""
    with _running.get_lock():
        _running.value += 1
    try:
        share_cores()
        return job(*args)
    finally:
        with _running.get_lock():
            _running.value -= 1


def run_all(job: Callable[..., Any], arguments: Sequence[tuple], workers: int, threads: int,
            announce: Callable[[Any], None] | None = None) -> list[Any]:
    """``[job(*a) for a in arguments]``, in ``workers`` processes when more than one; results in order.

    ``job`` must be importable (a module-level function); ``announce`` sees each result as it arrives.
    A failed run raises its own error here once the others have finished.
    """
    if workers <= 1:
        results = []
        for args in arguments:
            results.append(job(*args))
            if announce:
                announce(results[-1])
        return results
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    running = context.Value("i", 0)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(threads, running, workers * threads)) as pool:
        futures = [pool.submit(_counted, job, *args) for args in arguments]
        for future in futures:
            if announce and future.exception() is None:
                announce(future.result())
        return [future.result() for future in futures]
