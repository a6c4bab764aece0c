"""Benchmark the similarity suite (`prism cka --measure`): each measure's cost relative to plain CKA.

Synthetic LLM-like activations (benchmarks/cka.py's generator): L layers, n prompts, d dims.
Two columns per measure, medians of ``--repeat`` runs:
  one eval     one evaluation of the measure on (n x d, n x d) for every layer, / the same for linear CKA
  calibrated   what `prism cka --measure M` adds per probe set: the score, the permutation null
               (``--permutations``) and PRISM's resamples (``--bootstrap``), / what plain `prism cka`
               computes (CKA with its jackknife interval and the same resamples)

  python benchmarks/similarity.py --quick     # L 5, n 100, d 256, 20 permutations
  python benchmarks/similarity.py             # L 13, n 200, d 1024, 100 permutations (PRISM's n)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from cka import layers

from prism_analysis.representations.cka import bootstrap_cka, jackknife_cka
from prism_analysis.representations.similarity import MEASURES, measure, similarity_table


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--permutations", type=int, default=100)
    ap.add_argument("--bootstrap", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.layers, args.n, args.d, args.permutations, args.bootstrap = 5, 100, 256, 20, 5
    X, Y = layers(args.layers, args.n, args.d)
    X, Y = torch.from_numpy(np.stack(X)), torch.from_numpy(np.stack(Y))
    print(
        f"L {args.layers}, n {args.n}, d {args.d}; {args.permutations} permutations, {args.bootstrap} resamples; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    def one(name):
        return lambda: [measure(name, X[i], Y[i]) for i in range(args.layers)]

    def plain():
        jackknife_cka(X, Y)
        bootstrap_cka(X, Y, n_resamples=args.bootstrap, sample_size=args.n // 2)

    def calibrated(name):
        return lambda: similarity_table(X, Y, (name,), permutations=args.permutations, bootstrap=args.bootstrap)

    base_one = median_time(one("cka"), args.repeat)
    base_cal = median_time(plain, args.repeat)
    print(f"plain CKA: one eval (all layers) {base_one * 1e3:.1f} ms; jackknife + resamples {base_cal:.2f} s")
    print(f"{'measure':<12}{'one eval ms':>12}{'/ CKA':>8}{'calibrated s':>14}{'/ plain cka':>13}")
    for name in MEASURES:
        t1 = median_time(one(name), args.repeat)
        tc = median_time(calibrated(name), max(1, args.repeat // 2))
        print(f"{name:<12}{t1 * 1e3:>12.1f}{t1 / base_one:>7.1f}x{tc:>14.2f}{tc / base_cal:>12.1f}x")


if __name__ == "__main__":
    main()
