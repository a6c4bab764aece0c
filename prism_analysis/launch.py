"""``prism COMMAND [OPTIONS] --nproc N``: the same command in N processes, through torch.distributed's launcher.

This is ``torchrun --standalone --nproc-per-node N -m MODULE COMMAND ...`` run from inside ``prism``:
``torch.distributed.run`` starts N workers on this machine with a local rendezvous, each worker runs
the command with ``RANK``/``WORLD_SIZE`` set (:mod:`prism_analysis.distributed`), and the launcher
returns when all are done. Why an option and not only torchrun: torchrun's argument parser reads
every word that looks like an abbreviation of one of its own options, even after the script, so
``torchrun ... prism cka ... --n 200`` fails (``--n`` could be ``--nnodes``, ``--nproc-per-node``,
...); ``--nproc`` passes the command's own arguments untouched and needs no path to the script.

Threads: each worker gets ``OMP_NUM_THREADS`` = cores / N (at least 1) unless set, so N workers do
not oversubscribe the cores. A failed worker has already printed its one-line error (rank 0 prints
the error of whichever rank failed); the launcher's own failure report is kept quiet and the exit
status is the workers' (2 for bad input).
"""

from __future__ import annotations

import logging
import os

from .errors import PARAM, PrismError

EXIT_FAILED = 1


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (the workers run the command itself)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def threads_per_process(nproc: int) -> int:
    """Cores this process may use, divided among ``nproc`` workers (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // nproc)


def relaunch(module: str, argv: list[str], nproc: int) -> int:
    """Run ``python -m MODULE argv`` (less ``--nproc``) in ``nproc`` processes; the exit status."""
    from . import distributed

    if distributed.world_size() > 1:
        raise PrismError(
            f"{PARAM} is for a run started without a launcher; this one already runs under one", param="nproc"
        )
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as launch

    threads = str(threads_per_process(nproc))
    worker_env = {"OMP_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    added = {k: v for k, v in worker_env.items() if k not in os.environ}  # the user's settings win
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", module])
    args.training_script_args = strip_nproc(argv)  # never through torchrun's parser (it would read --n)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the workers report errors
    os.environ.update(added)  # the workers inherit this environment; this process gets its own back
    try:
        launch(args)
    except ChildFailedError as e:
        return failure_status(e.failures)
    finally:
        for key in added:
            os.environ.pop(key, None)
    return 0


def failure_status(failures: dict) -> int:
    """The exit status of a failed launch (the first worker's own status, 2 for bad input). A worker
    that ended without reporting (killed by a signal: out of memory, say) gets one line here."""
    import signal
    import sys

    ranks = sorted(failures.items())
    reported = any(f.exitcode is not None and f.exitcode > 0 for _, f in ranks)
    for rank, f in ranks:
        # once a worker has exited with its own status (its error printed), the launcher stops the
        # others with SIGTERM: a consequence, not a second error
        if f.exitcode is not None and f.exitcode < 0 and not (reported and -f.exitcode == signal.SIGTERM):
            print(f"prism: error: rank {rank} was killed ({f.signal_name()}; out of memory?)", file=sys.stderr)
            return EXIT_FAILED
    codes = [f.exitcode for _, f in ranks]
    return next((c for c in codes if c and c > 0), EXIT_FAILED)
