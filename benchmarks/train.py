"""Training throughput: `prism_train.lm.train` vs a plain hand-written PyTorch loop, same model.

Side by side in one process:
  plain  AdamW + cosine lr on pre-built batches (the same token batches prism would draw), no
         accelerate, no checkpoints: the floor for this model on this machine
  prism  prism_train.lm.train: batches drawn and tokenized on the fly, accelerate, lr schedule,
         gradient clipping, step-0 and final checkpoints written atomically
Reports tokens/s and prism's overhead over the plain loop.

  python benchmarks/train.py [--steps 150]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from prism_train.config import TrainConfig
from prism_train.data.mix import load_mix
from prism_train.lm import batch_for_step, lr_at, train
from prism_train.models import build_model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    cfg = TrainConfig(steps=args.steps, save_every=args.steps)
    tmp = Path(tempfile.mkdtemp())
    try:
        # prism (first: it also trains the tokenizer the plain loop then reuses)
        t = time.perf_counter()
        train(cfg, tmp / "run", progress=False, log=lambda *a: None)
        t_prism_total = time.perf_counter() - t
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tmp / "run" / "step_000000")
        sample = load_mix("pretrain").sampler("train")
        batches = [batch_for_step(sample, tok, s, cfg.seed, cfg.batch_size, cfg.seq_len) for s in range(cfg.steps)]
        # plain loop
        model = build_model("llama", seed=cfg.seed, vocab_size=len(tok))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1)
        model.train()
        t = time.perf_counter()
        for s, (ids, labels) in enumerate(batches):
            for g in opt.param_groups:
                g["lr"] = lr_at(s, cfg)
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        t_plain = time.perf_counter() - t
        # prism's loop alone (the manifest's clock excludes tokenizer training and model set-up)
        import json

        man = json.loads((tmp / "run" / "trajectory.json").read_text())
        t_prism_loop = man["steps"][-1]["time"] - man["steps"][0]["time"]
        tokens = man["steps"][-1]["tokens"]  # trained (non-padding) tokens, the same for both loops
        print(
            f"{cfg.steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens, tiny llama "
            f"({sum(p.numel() for p in model.parameters()):,} parameters), {torch.get_num_threads()} threads"
        )
        print(f"{'method':<56}{'wall s':>8}{'tokens/s':>11}{'vs plain':>10}")
        print(f"{'plain PyTorch loop (pre-built batches)':<56}{t_plain:>8.2f}{tokens / t_plain:>11,.0f}{1:>9.2f}x")
        print(
            f"{'prism train loop (data on the fly, accelerate, saves)':<56}{t_prism_loop:>8.2f}"
            f"{tokens / t_prism_loop:>11,.0f}{t_prism_loop / t_plain:>9.2f}x"
        )
        print(
            f"{'prism train incl. tokenizer training and set-up':<56}{t_prism_total:>8.2f}"
            f"{tokens / t_prism_total:>11,.0f}{t_prism_total / t_plain:>9.2f}x"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
