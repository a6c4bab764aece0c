"""Work split across processes with torch.distributed: who I am, what I own, and what the others found.

A command launched by ``torchrun --nproc-per-node N``, ``accelerate launch`` or ``prism ... --nproc N``
runs once per process; the launcher sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
address. :func:`init` joins the process group (gloo: the results exchanged here are small Python
objects on the CPU, whatever device did the work) with a timeout, so a rank that stops answering
ends the run instead of hanging it.

The analyses split their work with :func:`share`: items (tensor names) of known byte sizes are
given to ranks by :func:`assign` (deterministic, byte-balanced), each rank computes the results of
its own items, and the results are exchanged so every rank holds all of them, in the original item
order. The caller then merges them exactly as a single process would (same accumulators, same
order), so the float64 sums are bit-identical to a run with one process.

Errors: every exchange carries either a result or the one-line error of a rank that failed. When any
rank failed, every rank raises :class:`RankFailed` with the first failed rank's message at the same
exchange, so the whole run stops together, rank 0 reports that line, and nothing is written.
Without a launcher (``WORLD_SIZE`` unset or 1) nothing here touches torch.distributed.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Callable, Sequence

from .errors import PrismError

#: Seconds a rank waits for the others at an exchange before the run fails (env ``PRISM_DIST_TIMEOUT``).
DEFAULT_TIMEOUT = 7200.0

#: Whether this process exchanges results through this module (the analyses); the trainers'
#: process group belongs to accelerate, whose collectives :func:`finish` must not cut across.
_joined = False


class RankFailed(PrismError):
    """Raised on every rank when some rank failed: carries that rank's one-line error."""

    def __init__(self, rank: int, message: str):
        self.rank = rank
        super().__init__(message if rank == 0 else f"rank {rank}: {message}")


def world_size() -> int:
    """Processes in this run: the launcher's ``WORLD_SIZE`` (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's rank, 0..world_size()-1 (0 without a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    """This process's index on its node (its GPU is ``cuda:LOCAL_RANK``)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_root() -> bool:
    """Whether this process writes the outputs and prints (rank 0)."""
    return rank() == 0


def rank_device(spec=None):
    """The device of this rank: ``cuda:LOCAL_RANK`` when ``spec`` is cuda without an index (or None
    and a GPU is present), else ``spec`` as given."""
    import torch

    if spec in (None, "", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank() % torch.cuda.device_count()}"
    return spec


def timeout() -> float:
    """Seconds an exchange may wait: ``PRISM_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT`."""
    value = os.environ.get("PRISM_DIST_TIMEOUT")
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise PrismError(f"PRISM_DIST_TIMEOUT={value!r} is not a number of seconds") from None


def init() -> bool:
    """Join the launcher's process group (gloo) when ``WORLD_SIZE`` > 1; True when distributed."""
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    global _joined
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout()))
    leave_at_exit()  # several commands in one process share the group; leave it at exit
    _joined = True
    return True


_leaving = False


def leave_at_exit() -> None:
    """Run :func:`close` at exit (registered once), whoever started the process group: prism's
    analysis commands (:func:`init`) or accelerate in ``prism train`` / ``prism rl``, which leaves
    its group to the interpreter's teardown (seen as the same SIGABRT at exit as below)."""
    global _leaving
    if not _leaving:
        atexit.register(close)
        _leaving = True


def close() -> None:
    """Leave the process group (at exit, before the interpreter's teardown, so gloo's threads stop
    cleanly), all ranks together: a barrier first, so rank 0 -- whose process serves the group's
    TCP store -- does not tear the store down while another rank still talks to it (seen as a
    SIGABRT at exit, "terminate called without an active exception", about one launch in eight)."""
    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):  # a rank already gone (its error was reported): leave anyway
            dist.barrier()
        dist.destroy_process_group()


def assign(sizes: Sequence[int], world: int) -> list[int]:
    """The rank that owns each item: largest first, each to the rank with the fewest bytes so far.

    Greedy longest-processing-time scheduling (Graham 1969): the busiest rank's load is at most
    (4/3 - 1/(3 world)) times the best possible. Ties go to the lower index and the lower rank, so
    every rank computes the same assignment from the same sizes.
    """
    loads = [0] * world
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        owner[i] = r
        loads[r] += sizes[i]
    return owner


def one_line(e: BaseException) -> str:
    """An exception as the one line the CLI prints: a PrismError's text, else ``Type: text``."""
    from .errors import from_os_error

    if isinstance(e, PrismError):
        text = str(e)
    elif isinstance(e, OSError):
        text = str(from_os_error(e, "cannot complete"))
    else:
        text = f"{type(e).__name__}: {e}"
    return " ".join(text.split())


def exchange(payload=None, failed: str | None = None) -> list:
    """Every rank's ``payload``, in rank order, on every rank (one all_gather of Python objects).

    ``failed``: this rank's one-line error instead of a payload. When any rank sent one, every rank
    raises :class:`RankFailed` for the lowest such rank. A single process gets ``[payload]``.
    """
    if not init():
        if failed is not None:
            raise RankFailed(0, failed)
        return [payload]
    import torch.distributed as dist

    got: list = [None] * world_size()
    dist.all_gather_object(got, (failed, payload))
    for r, (error, _) in enumerate(got):
        if error is not None:
            raise RankFailed(r, error)
    return [p for _, p in got]


def share(names: Sequence[str], sizes: Sequence[int], work: Callable[[list[str]], dict]) -> tuple[dict, list[int]]:
    """Run ``work`` on this rank's share of ``names`` and collect every rank's results.

    ``sizes``: bytes each name costs to read (they balance the shares, :func:`assign`). ``work``
    takes this rank's names (in their original order) and returns ``{name: result}``. Returns the
    results of all names in the order of ``names`` on every rank, and the bytes each rank read.
    An error in ``work`` on any rank raises :class:`RankFailed` on all ranks.
    """
    world = world_size() if init() else 1
    owner = assign(sizes, world)
    loads = [0] * world
    for r, s in zip(owner, sizes):
        loads[r] += s
    me = rank() if world > 1 else 0
    try:
        mine = work([n for n, r in zip(names, owner) if r == me])
    except Exception as e:  # any failure of this rank's share ends every rank at this exchange
        if isinstance(e, RankFailed) or world == 1:
            raise
        exchange(failed=one_line(e))
        raise  # not reached: exchange raised RankFailed
    parts = exchange(mine)
    return {n: parts[r][n] for n, r in zip(names, owner)}, loads


def run_record(loads: list[int], unit: str = "bytes") -> dict:
    """What summary.json records of a distributed run (nothing for one process)."""
    if len(loads) <= 1:
        return {}
    return {"world_size": len(loads), f"{unit}_per_rank": loads}


def finish(error: BaseException | None = None) -> None:
    """End a command in step with the other ranks: report this rank's error, or that it is done.

    Every rank calls this once when its command ends, unless a :class:`RankFailed` already ended it
    at an exchange. With ``error``: raises :class:`RankFailed` for the lowest rank that failed
    (``error`` itself for one process, or when the other ranks can no longer be reached).
    Without: returns once every rank is done, or raises :class:`RankFailed` when one failed.
    """
    import torch.distributed as dist

    theirs = not _joined and dist.is_available() and dist.is_initialized()  # a trainer's (accelerate's) group
    if world_size() <= 1 or isinstance(error, RankFailed) or theirs:
        if error is not None:
            raise error
        return
    if error is None:
        exchange()
        return
    try:
        exchange(failed=one_line(error))
    except RankFailed:
        raise
    except Exception:  # the others are gone (their launcher stopped them): report this rank's own error
        raise error from None
