"""Independent training runs (ensemble members, stage-2 students) side by side on the CPU's cores.

A small model's training step does not keep two cores busy: measured on a 2-core machine, two
processes with one thread each train 1.3 times as many steps per second as one process with two.
Each run seeds itself and lives in its own folder, so where it ran changes nothing but float
rounding. The runs that start when fewer are left than workers (the last of 3 members on 2 cores)
get the cores the finished ones leave idle (``thread_plan``): one run alone trains about 1.5 times
faster with two threads than with one. The threads of each run follow from the plan alone, never
from timing, so the same command gives the same numbers again. On a GPU, or with DDP, runs stay one
after the other in this process.
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

from salsa_lib.stages import precision

PR_SET_PDEATHSIG = 1  # Linux prctl: a signal for this process when its parent dies


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


def thread_plan(n_runs: int, workers: int, cores: int) -> list[int]:
    """Threads for each of ``n_runs`` runs dispatched in order to ``workers`` processes on ``cores``.

    The first round shares the cores; a later run starts when one finishes and gets the cores of the
    workers that, by then, have nothing left to run (``cores // runs left``, at most ``workers`` runs).
    The last run of 3 on 2 cores gets 2 threads. Until its neighbour finishes, the cores are briefly
    oversubscribed: the price of threads that do not depend on timing.
    """
    first = max(1, cores // max(1, min(workers, n_runs)))
    return [first if k < workers else max(1, cores // max(1, min(workers, n_runs - k))) for k in range(n_runs)]


def _start_worker() -> None:
    """Each worker is killed with its parent (a killed notebook leaves no orphan still writing into a
    run folder that a rerun resumes)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _with_threads(threads: int, job: Callable[..., Any], *args: Any) -> Any:
    """``job(*args)`` in a worker, on the number of threads the plan gave this run."""
    torch.set_num_threads(threads)
    return job(*args)


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
    plan = thread_plan(len(arguments), workers, workers * threads)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker) as pool:
        futures = [pool.submit(_with_threads, n, job, *args) for n, args in zip(plan, arguments)]
        for future in futures:
            if announce and future.exception() is None:
                announce(future.result())
        return [future.result() for future in futures]
