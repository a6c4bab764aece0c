"""Stream aligned tensors with a bounded read-ahead: memory is a few tensors, never the model.

:func:`read_ahead` yields the tensor of every ``(checkpoint, name)`` in order while a background
thread reads the next ones (reading releases the GIL, so I/O overlaps with the statistics);
:func:`stream_aligned` groups them by name: ``(name, [tensor of each checkpoint])``.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
from collections.abc import Iterable, Iterator

import torch

from ..progress import progress_bar
from .base import CheckpointBase as Checkpoint


# -- streaming --------------------------------------------------------------------------------
def _fault_in(t: torch.Tensor) -> torch.Tensor:
    """Touch one byte per page so a memory-mapped tensor is read from disk now (in a worker thread)."""
    if t.numel() and t.is_contiguous():
        t.reshape(-1).view(torch.uint8)[::4096].sum()
    return t


def read_ahead(
    reads: Iterable[tuple[Checkpoint, str]], prefetch: int = 2, desc: str = "read", progress: bool = True
) -> Iterator[torch.Tensor]:
    """Yield the tensor of every ``(checkpoint, name)`` read, in order, with a byte progress bar.

    A background thread reads ``prefetch`` tensors ahead (reading releases the GIL), so I/O overlaps
    with whatever the caller computes. At most ``prefetch + 1`` of these tensors are alive at once,
    plus those the caller keeps: memory is bounded by the largest tensors, not by the checkpoint.
    """
    reads = list(reads)
    total = sum(c.info(n).nbytes for c, n in reads)
    it = iter(reads)
    with (
        progress_bar(total=total, unit="B", unit_scale=True, desc=desc, enabled=progress) as bar,
        futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prism-read") as pool,
    ):
        pending: collections.deque = collections.deque()

        def fill(limit: int) -> None:
            while len(pending) < limit and (item := next(it, None)) is not None:
                pending.append(pool.submit(lambda c, n: _fault_in(c.get(n)), *item))

        fill(1)
        while pending:
            tensor = pending.popleft().result()
            fill(max(prefetch, 0))  # reads in flight while the caller works on `tensor`
            bar.update(tensor.nbytes)
            yield tensor
            del tensor


def stream_aligned(
    ckpts: list[Checkpoint], names: list[str], desc: str = "read", progress: bool = True, prefetch: int = 1
) -> Iterator[tuple[str, list[torch.Tensor]]]:
    """Yield ``(name, [the tensor of each checkpoint])`` for every name, reading ahead.

    At most ``prefetch + 1`` groups are alive at once (the current one and those read ahead).
    """
    k = len(ckpts)
    tensors = read_ahead(
        ((c, n) for n in names for c in ckpts), prefetch=k * max(prefetch, 1), desc=desc, progress=progress
    )
    for name in names:
        yield name, [next(tensors) for _ in range(k)]
