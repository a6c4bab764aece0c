"""Run a study's independent jobs as parallel processes, one thread each, in dependency order.

The three mid-trainings and the five RL runs of the study do not depend on each other (an RL run
depends only on its starting model), and at these model sizes (~1M parameters) one process per
core with one thread each trains faster than one process with a thread per core: the matrices are
too small for intra-op threading to pay off (measured in the README). :func:`run_jobs` keeps up to
``workers`` jobs running; a job starts as soon as the jobs it depends on have finished, so RL from
the base starts while the mid-trainings still run.

Each job runs ``fn(**kwargs)`` in a fresh ``spawn`` process (never ``fork``: torch's thread pools
do not survive it) with ``torch.set_num_threads(threads)``; its wall time is returned. The first
failure is raised in the caller once the running jobs have finished (a :class:`PrismError` keeps
its message); nothing else is started after it.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field


@dataclass
class Job:
    name: str
    fn: object  # a module-level function (it is pickled to the worker)
    kwargs: dict = field(default_factory=dict)
    after: tuple[str, ...] = ()  # names of the jobs that must finish first


def _limit_threads(threads: int) -> None:
    """Run in each worker before any job is unpickled (a job's module may import torch): torch and
    its OpenMP pool read OMP_NUM_THREADS when first imported, numba (the fused kernels of the live
    tracking inside RL runs) NUMBA_NUM_THREADS. Without the last, each RL worker measured its
    steps on every core: two workers ran 2-3 threads on 2 cores, and RL took ~1.6x as long."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def call_with_threads(fn, kwargs: dict, threads: int) -> float:
    """``fn(**kwargs)`` with torch limited to ``threads`` threads (the caller's count given back
    after); returns its wall time in seconds."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(threads)
    try:
        t = time.perf_counter()
        fn(**kwargs)
        return time.perf_counter() - t
    finally:  # a job run in the caller's process gives the caller its thread count back
        if before is not None:
            torch.set_num_threads(before)


def run_jobs(jobs: list[Job], workers: int = 2, threads: int = 1, log=print) -> dict[str, float]:
    """Run ``jobs`` (up to ``workers`` at once, ``threads`` torch threads each); name -> seconds.

    With ``workers`` = 1 the jobs run one after another in this process (no process start-up)."""
    names = [j.name for j in jobs]
    unknown = {d for j in jobs for d in j.after} - set(names)
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"jobs must have distinct names and depend on listed jobs only ({sorted(unknown)})")
    times: dict[str, float] = {}
    if workers <= 1:
        for j in jobs:
            t = time.perf_counter()
            j.fn(**j.kwargs)
            times[j.name] = time.perf_counter() - t
            log(f"  {j.name} done ({times[j.name]:.0f}s)")
        return times
    pending, running, error = list(jobs), {}, None
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_limit_threads, initargs=(threads,)
    ) as pool:
        while pending or running:
            if error is None:
                for j in [j for j in pending if all(d in times for d in j.after)]:
                    if len(running) >= workers:
                        break
                    pending.remove(j)
                    running[pool.submit(call_with_threads, j.fn, j.kwargs, threads)] = j.name
                    log(f"  {j.name} started")
            elif not running:
                break
            if not running:
                raise ValueError(f"jobs {[j.name for j in pending]} wait on each other")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                name = running.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    error = error or exc
                    continue
                times[name] = fut.result()
                log(f"  {name} done ({times[name]:.0f}s)")
    if error is not None:
        raise error
    return times
