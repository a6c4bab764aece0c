"""Where the `tiny` study's time goes, and how to schedule it on a 2-core machine.

  threads     one training process with 1 thread, with 2 threads (how the study pretrains: it
              runs alone), and two processes with 1 thread each (the study's later stages), same
              mid-training steps of the tiny model: steps/s of the machine
  generation  greedy evaluation of 200 held-out problems (math_easy + code) by batch size, with and
              without the KV cache, and the share of prompt padding per batch

Medians of ``--repeats`` runs; on a shared machine run it when nothing else is (or say so).

  python benchmarks/study.py CHECKPOINT [--steps 40] [--repeats 2] [--only threads|generation]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from prism_train.config import TrainConfig
from prism_train.lm import train
cfg = TrainConfig(phase="mid", mix="mcs", init=sys.argv[1], steps=int(sys.argv[4]), save_every=10**6, warmup=5)
t = time.perf_counter()
train(cfg, sys.argv[2], progress=False, log=lambda *a: None)
print(time.perf_counter() - t)
"""


def _train(ckpt, out, threads, steps):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN, str(ckpt), str(out), str(threads), str(steps)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def threads(ckpt, steps, repeats):
    alone, one, two = [], [], []
    for _ in range(repeats):
        for n_threads, runs in ((1, alone), (2, one)):
            with tempfile.TemporaryDirectory() as d:
                t = time.perf_counter()
                p = _train(ckpt, Path(d) / "a", n_threads, steps)
                p.communicate()
                runs.append(steps / (time.perf_counter() - t))
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            ps = [_train(ckpt, Path(d) / n, 1, steps) for n in ("a", "b")]
            for p in ps:
                p.communicate()
            two.append(2 * steps / (time.perf_counter() - t))
    return {
        "one_process_one_thread_steps_per_s": statistics.median(alone),
        "one_process_two_threads_steps_per_s": statistics.median(one),
        "two_processes_one_thread_steps_per_s": statistics.median(two),
        "runs": {"alone": alone, "one": one, "two": two},
    }


def generation(ckpt, repeats):
    import torch

    torch.set_num_threads(1)
    from prism_analysis.representations.model_loader import load_model
    from prism_train.evaluate import benchmark

    model, tok = load_model(ckpt, device="cpu", dtype="float32", progress=False)
    prompts = [p.prompt for b in ("math_easy", "code") for p in benchmark(b, 100)]
    out = {}
    for bs in (32, 100, 200):
        enc = [tok(prompts[i : i + bs], padding=True, padding_side="left") for i in range(0, len(prompts), bs)]
        pad = sum(sum(1 for m in row if m == 0) for e in enc for row in e["attention_mask"])
        total = sum(len(row) for e in enc for row in e["attention_mask"])
        for cache in (True, False) if bs == 100 else (True,):
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                for i in range(0, len(prompts), bs):
                    e = tok(prompts[i : i + bs], return_tensors="pt", padding=True, padding_side="left")
                    with torch.no_grad():
                        model.generate(
                            **e,
                            max_new_tokens=96,
                            do_sample=False,
                            use_cache=cache,
                            pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id,
                        )
                times.append(time.perf_counter() - t)
            out[f"batch {bs}, kv cache {'on' if cache else 'off'}"] = {
                "seconds_200_problems": statistics.median(times),
                "prompt_padding_share": pad / total,
            }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", choices=("threads", "generation"))
    args = ap.parse_args()
    res = {}
    if args.only in (None, "threads"):
        res["threads"] = threads(args.checkpoint, args.steps, args.repeats)
    if args.only in (None, "generation"):
        res["generation"] = generation(args.checkpoint, args.repeats)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
