"""Time to audit a checkpoint pair against the number of tensors (MoE models have tens of thousands).

For N tiny tensors per checkpoint (two shards each), side by side in one process:

  prism   prism_analysis.weights.audit.audit (headers parsed once; each tensor mapped on its own)
  reopen  reading every tensor through its own safetensors.safe_open, which re-parses the file's
          whole header per tensor (how the reader worked before): time grows as N^2

  python benchmarks/many_tensors.py                  # N = 2,000, 8,000, 20,000
  python benchmarks/many_tensors.py --counts 1000,4000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def make(root: Path, n: int, shift: float) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    names = [f"model.layers.{i // 256}.mlp.experts.{i % 256}.w1.weight" for i in range(n)]
    weight_map = {}
    for s in range(2):
        part = {name: torch.full((16,), float(i) + shift) for i, name in enumerate(names) if i % 2 == s}
        fname = f"model-{s + 1:05d}-of-00002.safetensors"
        save_file(part, root / fname)
        weight_map.update(dict.fromkeys(part, fname))
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root


def reopen_each(a: Path, b: Path) -> int:
    index = json.loads((a / "model.safetensors.index.json").read_text())["weight_map"]
    total = 0
    for name, fname in index.items():
        with safe_open(a / fname, "pt") as fa, safe_open(b / fname, "pt") as fb:
            total += int((fa.get_tensor(name) != fb.get_tensor(name)).sum())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="2000,8000,20000", help="tensor counts to time")
    args = ap.parse_args()
    from prism_analysis.weights.audit import audit

    print(f"{'tensors':>8}{'prism s':>10}{'us/tensor':>11}{'reopen s':>10}{'us/tensor':>11}{'reopen/prism':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.counts.split(",")):
            a, b = make(Path(tmp) / f"a{n}", n, 0.0), make(Path(tmp) / f"b{n}", n, 1.0)
            t = time.perf_counter()
            audit(a, b, progress=False, device="cpu")
            ours = time.perf_counter() - t
            t = time.perf_counter()
            reopen_each(a, b)
            naive = time.perf_counter() - t
            per_ours, per_naive = 1e6 * ours / n, 1e6 * naive / n
            print(f"{n:>8}{ours:>10.2f}{per_ours:>11.0f}{naive:>10.2f}{per_naive:>11.0f}{naive / ours:>13.1f}x")


if __name__ == "__main__":
    main()
