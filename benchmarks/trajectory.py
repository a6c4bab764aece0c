"""Benchmark `prism trajectory`: bytes read vs. checkpoint sizes, and time vs. the naive way.

A synthetic bf16 RL-like trajectory (K checkpoints; each step moves a growing, front-loaded subset
of weights). Side by side in one process, warm page cache:
  prism  analyse_trajectory: every checkpoint read once, statistics vs theta_0 and theta_T
  naive  audit(theta_0, theta_t) and audit(theta_t, theta_T) for every t, separately
         (what users script today with a pairwise tool; it gets L2 and fractions, not cosines)
Bytes read are counted by Checkpoint.get.

Then the trajectory kernel alone (OverlapStats' fused.overlap_stats, two updates of four bf16
tensors in memory) against ``baseline_kernel``, a copy of the scalar kernel it replaced (kept here
only as the baseline): GB/s of the four inputs, best of 3 each, same arrays, same threads, and a
check that both give the same counts.

  python benchmarks/trajectory.py            # 8 checkpoints of ~0.2 GB; kernel on 4 x 128 MB
  python benchmarks/trajectory.py --quick    # 6 checkpoints of ~0.03 GB; kernel on 4 x 32 MB
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from numba import njit, prange
from safetensors.torch import save_file

from prism_analysis.checkpoints import local as ck
from prism_analysis.weights.audit import audit
from prism_analysis.weights.trajectory import analyse_trajectory

BLOCK = 1 << 16


@njit(inline="always", cache=True)
def _changed(finite, abs_diff, abs_x, eq, tau):  # pragma: no cover - compiled
    return abs_diff > tau * abs_x if finite else not eq


@njit(parallel=True, cache=True, nogil=True)
def baseline_kernel(a1, b1, a2, b2, tau, bf16):  # pragma: no cover - compiled
    """The scalar overlap kernel of prism_analysis.weights.fused before the SIMD rewrite (the baseline)."""
    n = a1.size
    nblocks = (n + BLOCK - 1) // BLOCK
    acc = np.zeros((nblocks, 3))
    cnt = np.zeros((nblocks, 3), dtype=np.int64)
    for blk in prange(nblocks):
        lo = blk * BLOCK
        hi = min(n, lo + BLOCK)
        m = hi - lo
        u = np.empty((4, m), dtype=np.uint32)
        if bf16:
            for j in range(m):
                u[0, j] = np.uint32(a1[lo + j]) << 16
                u[1, j] = np.uint32(b1[lo + j]) << 16
                u[2, j] = np.uint32(a2[lo + j]) << 16
                u[3, j] = np.uint32(b2[lo + j]) << 16
        else:
            for j in range(m):
                u[0, j] = a1[lo + j]
                u[1, j] = b1[lo + j]
                u[2, j] = a2[lo + j]
                u[3, j] = b2[lo + j]
        f = u.view(np.float32)
        dot = 0.0
        s1 = 0.0
        s2 = 0.0
        n1 = 0
        n2 = 0
        n12 = 0
        for j in range(m):
            x1 = np.float64(f[0, j])
            y1 = np.float64(f[1, j])
            x2 = np.float64(f[2, j])
            y2 = np.float64(f[3, j])
            d1 = y1 - x1
            d2 = y2 - x2
            if np.isfinite(d1) and np.isfinite(d2):
                dot += d1 * d2
                s1 += d1 * d1
                s2 += d2 * d2
            f1 = np.isfinite(x1) and np.isfinite(y1)
            f2 = np.isfinite(x2) and np.isfinite(y2)
            c1 = _changed(f1, abs(d1), abs(x1), u[0, j] == u[1, j], tau)
            c2 = _changed(f2, abs(d2), abs(x2), u[2, j] == u[3, j], tau)
            n1 += c1
            n2 += c2
            n12 += c1 and c2
        acc[blk, 0] = dot
        acc[blk, 1] = s1
        acc[blk, 2] = s2
        cnt[blk, 0] = n1
        cnt[blk, 1] = n2
        cnt[blk, 2] = n12
    return acc, cnt


def kernel_benchmark(n: int) -> None:
    """GB/s of fused.overlap_stats vs baseline_kernel on two bf16 updates of n elements."""
    import numba

    from prism_analysis.weights import fused

    g = torch.Generator().manual_seed(1)
    a1 = (torch.randn(n, generator=g) * 0.02).bfloat16()
    a2 = (torch.randn(n, generator=g) * 0.02).bfloat16()
    b1, b2 = a1.clone(), a2.clone()
    for a, b in ((a1, b1), (a2, b2)):
        idx = torch.randint(0, n, (n // 20,), generator=g)
        b[idx] = (a[idx].float() * (1 + 0.03 * torch.randn(len(idx), generator=g))).bfloat16()
    bits = [t.view(torch.int16).numpy().view(np.uint16) for t in (a1, b1, a2, b2)]
    nbytes = 4 * a1.nbytes
    fused.overlap_stats(a1[:16], b1[:16], a2[:16], b2[:16], 0.01)  # compile (or load) both first
    baseline_kernel(*[x[:16] for x in bits], 0.01, True)
    best = {"baseline": math.inf, "new": math.inf}
    for _ in range(3):
        t = time.perf_counter()
        _, c_old = baseline_kernel(*bits, 0.01, True)
        best["baseline"] = min(best["baseline"], time.perf_counter() - t)
        t = time.perf_counter()
        _, c_new = fused.overlap_stats(a1, b1, a2, b2, 0.01)
        best["new"] = min(best["new"], time.perf_counter() - t)
    assert c_old.sum(axis=0).tolist() == c_new, "the kernels disagree on the counts"
    old, new = nbytes / best["baseline"] / 1e9, nbytes / best["new"] / 1e9
    print(
        f"\ntrajectory kernel, 4 x {a1.nbytes / 1e6:.0f} MB bf16 in memory, {numba.get_num_threads()} numba threads: "
        f"baseline (scalar) {old:.2f} GB/s, fused.overlap_stats {new:.2f} GB/s: {new / old:.2f}x"
    )


def make_run(root: Path, hidden: int, layers: int, steps: list[int]) -> list[Path]:
    if (root / "trajectory.json").exists():
        return [root / f"step_{s:06d}" for s in steps]
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (8000, hidden)}
    for i in range(layers):
        shapes.update(
            {
                f"model.layers.{i}.self_attn.q_proj.weight": (hidden, hidden),
                f"model.layers.{i}.mlp.up_proj.weight": (3 * hidden, hidden),
                f"model.layers.{i}.mlp.down_proj.weight": (hidden, 3 * hidden),
            }
        )
    theta0 = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    final = {k: torch.randn(s, generator=g) * 0.002 * (torch.rand(s, generator=g) < 0.05) for k, s in shapes.items()}
    entries = []
    for s in steps:
        frac = 1 - math.exp(-s / (steps[-1] / 5))
        d = root / f"step_{s:06d}"
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: (theta0[k] + frac * final[k]).bfloat16() for k in shapes}, d / "model.safetensors")
        (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
        entries.append({"step": s, "path": d.name})
    (root / "trajectory.json").write_text(json.dumps({"phase": "rl", "parent": None, "steps": entries}))
    return [root / f"step_{s:06d}" for s in steps]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--root", default="bench_out/trajectory")
    args = ap.parse_args()
    hidden, layers, steps = (
        (512, 4, [0, 10, 20, 50, 100, 200]) if args.quick else (1024, 8, [0, 25, 50, 100, 200, 400, 700, 1000])
    )
    root = Path(args.root) / ("quick" if args.quick else "default")
    paths = make_run(root, hidden, layers, steps)
    sizes = sum(ck.Checkpoint(p).nbytes for p in paths)
    for p in paths:  # warm the page cache
        for f in p.glob("*.safetensors"):
            f.read_bytes()
    from prism_analysis.weights.overlap import OverlapStats
    from prism_analysis.weights.update import UpdateStats

    x = torch.ones(1 << 20, dtype=torch.bfloat16)  # load the numba kernels (cached on disk) before timing
    UpdateStats().update(x, x)
    OverlapStats().update(x, x, x, x)
    reads = {"n": 0}
    original = ck.Checkpoint.get

    def counting_get(self, name):
        reads["n"] += self.info(name).nbytes
        return original(self, name)

    ck.Checkpoint.get = counting_get
    t = time.perf_counter()
    traj = analyse_trajectory(root, progress=False, device="cpu")
    t_prism = time.perf_counter() - t
    b_prism = reads["n"]
    reads["n"] = 0
    t = time.perf_counter()
    for p in paths:
        audit(paths[0], p, progress=False, device="cpu")
        audit(p, paths[-1], progress=False, device="cpu")
    t_naive = time.perf_counter() - t
    b_naive = reads["n"]
    ck.Checkpoint.get = original
    t50 = traj.summary()["total"]["t50"]
    print(f"trajectory: {len(paths)} bf16 checkpoints, {sizes / 1e9:.2f} GB in all; t50 = {t50}")
    print(f"{'method':<52}{'wall s':>9}{'bytes read / sizes':>20}{'time / prism':>14}")
    print(
        f"{'prism analyse_trajectory (L2, fractions, cosines)':<52}{t_prism:>9.2f}{b_prism / sizes:>19.2f}x{1:>13.2f}x"
    )
    print(
        f"{'naive: audit(0, t) + audit(t, T) for every t':<52}{t_naive:>9.2f}{b_naive / sizes:>19.2f}x"
        f"{t_naive / t_prism:>13.2f}x"
    )
    kernel_benchmark(1 << 24 if args.quick else 1 << 26)


if __name__ == "__main__":
    main()
