"""The contract every streaming statistic keeps (torchmetrics' tester, for this package's accumulators).

For each :class:`~prism_analysis.accumulator.Accumulator` -- UpdateStats, OverlapStats,
SpectralStats, Bf16Visibility, StreamingCKA, MinibatchCKA -- on every device present:

- the updates split between two accumulators and merged give the whole's ``compute()``;
- merging into an ``empty()`` accumulator, or merging an empty one in, changes nothing;
- across processes (two gloo ranks on the CPU), each rank's share reduced with ``all_reduce()``
  gives the whole's ``compute()`` on every rank.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import torch.multiprocessing as mp

from prism_analysis.representations.cka import MinibatchCKA, StreamingCKA
from prism_analysis.weights.overlap import OverlapStats
from prism_analysis.weights.spectral import Bf16Visibility, SpectralStats
from prism_analysis.weights.update import UpdateStats


def _pairs(g, n=4, shape=(24, 16)):
    out = []
    for _ in range(n):
        a = torch.randn(shape, generator=g)
        b = a + torch.where(torch.rand(shape, generator=g) < 0.3, 0.05 * torch.randn(shape, generator=g), 0)
        out.append((a, b))
    return out


def _cases(device: str) -> dict:
    """name -> (make, [update arguments, ...]) with tensors on ``device``."""
    g = torch.Generator().manual_seed(0)
    pairs = _pairs(g)
    quads = [(a, b, a, b + 0.01 * torch.randn(b.shape, generator=g)) for a, b in pairs]
    chunks = [(torch.randn(3, 12, 8, generator=g), torch.randn(3, 12, 6, generator=g) + 2.0) for _ in range(4)]
    on = lambda args: tuple(t.to(device) for t in args)  # noqa: E731
    return {
        "UpdateStats": (lambda: UpdateStats(thresholds=(0.001, 0.01, 0.1)), [on(p) for p in pairs]),
        "OverlapStats": (lambda: OverlapStats(tau=0.01), [on(q) for q in quads]),
        "SpectralStats": (lambda: SpectralStats(k=4), [on(p) for p in pairs]),
        "Bf16Visibility": (Bf16Visibility, [on(p) for p in pairs]),
        "StreamingCKA": (lambda: StreamingCKA(debiased=True, dtype=torch.float64), [on(c) for c in chunks]),
        "StreamingCKA-biased": (lambda: StreamingCKA(dtype=torch.float64), [on(c) for c in chunks]),
        "MinibatchCKA": (MinibatchCKA, [on(c) for c in chunks]),
    }


def _plain(value):
    """compute()'s value as nested Python floats (tensors to lists), for comparison."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().reshape(-1).tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _close(x, y, rel=1e-10) -> bool:
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k], rel) for k in x)
    if isinstance(x, list):
        return len(x) == len(y) and all(_close(u, v, rel) for u, v in zip(x, y))
    if isinstance(x, float) and math.isnan(x):
        return isinstance(y, float) and math.isnan(y)
    if isinstance(x, (int, float)):
        return abs(x - y) <= rel * max(abs(x), abs(y), 1e-300)
    return x == y


def _fed(make, updates):
    acc = make()
    for args in updates:
        acc.update(*args)
    return acc


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("where", _devices())
@pytest.mark.parametrize("name", list(_cases("cpu")))
def test_split_and_merge_equals_whole(name, where):
    make, updates = _cases(where)[name]
    whole = _plain(_fed(make, updates).compute())
    merged = _fed(make, updates[:1]).merge(_fed(make, updates[1:]))
    assert _close(_plain(merged.compute()), whole)
    into_empty = make().merge(_fed(make, updates))
    assert _close(_plain(into_empty.compute()), whole)
    with_empty = _fed(make, updates).merge(make())
    assert _close(_plain(with_empty.compute()), whole)
    assert _close(_plain(_fed(make, updates).empty().merge(_fed(make, updates)).compute()), whole)


def test_a_different_split_would_be_caught():
    """The comparison above can fail: leaving one update out changes the result."""
    make, updates = _cases("cpu")["UpdateStats"]
    assert not _close(_plain(_fed(make, updates[1:]).compute()), _plain(_fed(make, updates).compute()))


def _rank(rank: int, world: int, init: str, out: str) -> None:  # pragma: no cover - runs in a child
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    results = {}
    for name, (make, updates) in _cases("cpu").items():
        mine = updates[rank::world]
        results[name] = _plain(_fed(make, mine).all_reduce().compute())
    torch.save(results, f"{out}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


def test_all_reduce_across_two_processes_equals_whole(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    sys.path.insert(0, os.path.dirname(__file__))
    mp.start_processes(_rank, args=(2, init, str(tmp_path / "out")), nprocs=2, start_method="spawn", join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"out.{rank}", weights_only=True)
        for name, (make, updates) in _cases("cpu").items():
            assert _close(got[name], _plain(_fed(make, updates).compute()), rel=1e-9), (rank, name)
