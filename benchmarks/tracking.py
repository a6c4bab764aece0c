"""Overhead of live tracking: a training loop with UpdateTracker against the same loop without it.

Side by side in one process, on the same model and batches (AdamW, random tokens):
  plain    the loop alone
  tracked  the loop with ``UpdateTracker(model, every=E, k_steps=(1,))``, reference in host RAM
The runs alternate (plain, tracked, plain, tracked, ...) and the medians are compared, so a
machine that slows down in between affects both alike. Reports seconds per step, the ratio
tracked / plain (target <= 1.05 at every=10), the cost of one tracked step, and the memory the
references hold.

  python benchmarks/tracking.py [--steps 40] [--repeats 3] [--every 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prism_analysis.tracking.tracker import UpdateTracker
from prism_train.models import build_model

SHAPES = {
    "tiny (the study's model)": dict(),
    "larger (hidden 512, 8 layers)": dict(hidden_size=512, num_layers=8),
}


def run(model_kw, steps, every, tracked, batch, seq):
    model = build_model("llama", seed=0, **model_kw)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, model.config.vocab_size, (batch, seq), generator=g) for _ in range(4)]
    tracker = None
    t0 = time.perf_counter()
    if tracked:
        tracker = UpdateTracker(model, every=every, k_steps=(1,), out=None)
    for step in range(1, steps + 1):
        ids = batches[step % 4]
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if tracker is not None:
            tracker.step(step)
    if tracker is not None:
        tracker.finish()
    elapsed = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    ref_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    measure = None
    if tracked:
        t = time.perf_counter()
        tracker._measure(steps + every)  # one more measurement alone: its cost
        measure = time.perf_counter() - t
    return elapsed, n_params, ref_bytes, measure


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} steps, every={args.every}")
    for label, kw in SHAPES.items():
        plain, tracked, measures = [], [], []
        for _ in range(args.repeats):
            t, n, ref_bytes, _ = run(kw, args.steps, args.every, False, args.batch, args.seq)
            plain.append(t)
            t, n, ref_bytes, m = run(kw, args.steps, args.every, True, args.batch, args.seq)
            tracked.append(t)
            measures.append(m)
        p, q = statistics.median(plain), statistics.median(tracked)
        print(
            f"{label}: {n / 1e6:.2f} M params; plain {1e3 * p / args.steps:.1f} ms/step, "
            f"tracked {1e3 * q / args.steps:.1f} ms/step, ratio {q / p:.3f}; "
            f"one tracked step {1e3 * statistics.median(measures):.0f} ms; "
            f"references in RAM: theta_0 {ref_bytes / 2**20:.1f} MiB + k=1 {ref_bytes / 2**20:.1f} MiB"
        )


if __name__ == "__main__":
    main()
