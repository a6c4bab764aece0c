"""``prism demo``: the smallest real example of the audit, end to end, on a laptop CPU.

A tiny LLaMA-family model is saved as the "base" checkpoint, trained for a few AdamW steps
(PRISM's mid-training optimiser settings, a larger learning rate) on synthetic token sequences,
saved as "mid", and the pair is audited. Dense training moves almost every weight, as PRISM's
mid-training does.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .weights import audit


def run_demo(out: Path, steps: int = 30, seed: int = 0) -> str:
    from prism_train.models import build_model
    out.mkdir(parents=True, exist_ok=True)
    model = build_model("llama", seed=seed)
    model.save_pretrained(out / "base")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    for _ in range(steps):
        # a learnable synthetic language: each sequence counts upward from a random start
        start = torch.randint(0, vocab, (8, 1), generator=g)
        ids = (start + torch.arange(64)) % vocab
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out / "mid")
    result = audit(out / "base", out / "mid", progress=False)
    result.save(out / "audit_base_to_mid")
    return (f"trained {steps} steps (final loss {loss.item():.3f})\n\n{result.format()}\n\n"
            f"wrote {out}/base, {out}/mid and {out}/audit_base_to_mid/")
