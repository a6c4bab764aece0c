"""Benchmark `prism trajectory`: bytes read vs. checkpoint sizes, and time vs. the naive way.

A synthetic bf16 RL-like trajectory (K checkpoints; each step moves a growing, front-loaded subset
of weights). Side by side in one process, warm page cache:
  prism  analyse_trajectory: every checkpoint read once, statistics vs theta_0 and theta_T
  naive  audit(theta_0, theta_t) and audit(theta_t, theta_T) for every t, separately
         (what users script today with a pairwise tool; it gets L2 and fractions, not cosines)
Bytes read are counted by Checkpoint.get.

  python benchmarks/trajectory.py            # 8 checkpoints of ~0.2 GB
  python benchmarks/trajectory.py --quick    # 6 checkpoints of ~0.03 GB
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from prism_analysis.checkpoints import reader as ck
from prism_analysis.weights.audit import audit
from prism_analysis.weights.trajectory import analyse_trajectory


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
    from prism_analysis.weights.audit import UpdateStats
    from prism_analysis.weights.compare import OverlapStats

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


if __name__ == "__main__":
    main()
