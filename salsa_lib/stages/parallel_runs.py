"""Independent training runs (ensemble members, stage-2 students) side by side on the CPU's cores.

A small model's training step does not keep two cores busy: on a 2-core AVX2-only EPYC, two
processes with one thread each trained 1.11 times as many steps per second as one process with two
(``thread_use`` in results/benchmarks/models.json, from benchmarks/bench_models.py). The runs that
start when fewer are left than workers (the last of 3 members on 2 cores) get the cores the finished
ones leave idle (``thread_plan``): there one run alone trained 1.84 times faster on two threads than
on one. How many workers start depends on the cores this process may use (affinity and CPU quota) and
on the memory available (``WORKER_MEMORY_MB`` each), never on timing; each run seeds itself and
lives in its own folder. What a change of layout does to the numbers: see ``thread_plan``. On a GPU,
or with DDP, runs stay one after the other in this process.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, NamedTuple, Sequence

import torch

from salsa_lib.stages import precision, resources

PR_SET_PDEATHSIG = 1  # Linux prctl: a signal for this process when its parent dies
# What one worker process needs, in MB: the largest process of notebooks 01 and 03 on the tiny profile
# peaked at 3,145 MB (peak_process_rss_mb in results/benchmarks/pipeline.json, from
# benchmarks/bench_pipeline.py: notebook 01), plus a fifth for safety, rounded up to 4 GiB.
# tests/test_benchmarks.py holds this figure to the stored measurement.
WORKER_MEMORY_MB = 4096


class WorkerPlan(NamedTuple):
    """How independent runs share the machine, and why, in words for the notebook's one line."""

    workers: int
    threads: int
    why: str


def plan_workers(config, n_runs: int, cores: int | None = None, memory_bytes: int | None = None) -> WorkerPlan:
    """Worker processes and threads each for ``n_runs`` runs of a training ``config``.

    ``parallel_runs``: 0 asks for as many processes as fit (one per core, as many as the available
    memory holds at ``WORKER_MEMORY_MB`` each, at most one per run), 1 keeps the runs in this process,
    n asks for at most n. A GPU or DDP run always stays in this process. ``cores`` and
    ``memory_bytes`` answer for the machine (tests); None asks it (``resources``).
    """
    cores = resources.available_cores() if cores is None else cores
    if precision.uses_gpu(config.accelerator) or config.devices > 1 or config.num_nodes > 1:
        return WorkerPlan(1, cores, f"one process: {'a GPU' if precision.uses_gpu(config.accelerator) else 'DDP'} "
                                    "trains the runs one after the other")
    memory = resources.available_memory() if memory_bytes is None else memory_bytes
    fit = max(1, int(memory // (WORKER_MEMORY_MB * 2 ** 20)))
    wanted = cores if config.parallel_runs == 0 else config.parallel_runs
    workers = max(1, min(n_runs, wanted, fit))
    limits = {"runs": n_runs, "cores": cores, "memory": fit,
              **({"parallel_runs": config.parallel_runs} if config.parallel_runs else {})}
    binding = ", ".join(name for name, value in limits.items() if value == workers) or "parallel_runs"
    why = (f"{cores} core{'s' * (cores != 1)}, {memory / resources.GIB:.1f} GiB available at "
           f"{WORKER_MEMORY_MB / 1024:.1f} GiB per run ({fit} fit), {n_runs} run{'s' * (n_runs != 1)}; "
           f"limited by {binding}")
    return WorkerPlan(workers, max(1, cores // workers), why)


def describe(plan: WorkerPlan, n_runs: int, what: str) -> str:
    """The plan's one line: e.g. 'training 9 students in 2 processes, 1 thread each (2 cores, ...)'."""
    where = (f"in {plan.workers} processes, {plan.threads} thread{'s' * (plan.threads != 1)} each"
             if plan.workers > 1 else f"one after the other on {plan.threads} thread{'s' * (plan.threads != 1)}")
    return f"training {n_runs} {what} {where} ({plan.why})"


def thread_plan(n_runs: int, workers: int, cores: int) -> list[int]:
    """Threads for each of ``n_runs`` runs dispatched in order to ``workers`` processes on ``cores``.

    The first round shares the cores; a later run starts when one finishes and gets the cores of the
    workers that, by then, have nothing left to run (``cores // runs left``, at most ``workers`` runs).
    The last run of 3 on 2 cores gets 2 threads. Until its neighbour finishes, the cores are briefly
    oversubscribed: the price of threads that do not depend on timing.

    A run's thread count decides how its float sums are split, so the numbers are bit-identical
    for the same plan (same machine kind, cores, memory and ``parallel_runs``) and equal up to rounding
    under another plan (tests/stages/test_parallel_runs.py and test_stage1.py hold both).
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
            announce: Callable[[Any], None] | None = None, order: Sequence[int] | None = None) -> list[Any]:
    """``[job(*a) for a in arguments]``, in ``workers`` processes when more than one; results in order.

    ``job`` must be importable (a module-level function); ``announce`` sees each result as it arrives.
    ``order``: the positions of ``arguments`` in the order they are dispatched (None: as given), so a
    long run can start first instead of running alone at the end; ``thread_plan`` follows it (in this
    process, with one worker, the runs go as given: the order changes nothing there).
    A failed run raises its own error here once the others have finished.
    """
    order = list(range(len(arguments))) if order is None else list(order)
    if sorted(order) != list(range(len(arguments))):
        raise ValueError(f"order {order} is not a permutation of the {len(arguments)} runs")
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
        futures = {k: pool.submit(_with_threads, n, job, *arguments[k]) for n, k in zip(plan, order)}
        for k in order:
            if announce and futures[k].exception() is None:
                announce(futures[k].result())
        return [futures[k].result() for k in range(len(arguments))]
