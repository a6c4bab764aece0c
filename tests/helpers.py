"""Test helpers: tiny random checkpoints written to disk, as users' checkpoints are."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

#: The tests folder, the repository, and the subprocess driver scripts (run under torchrun or python).
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SCRIPTS = TESTS / "scripts"


def save_state(state: dict, path: Path, config: dict | None = None, shards: int = 1) -> Path:
    """Write ``state`` as a HF-style safetensors directory (``shards`` > 1 writes an index)."""
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in state.items()}
    if shards == 1:
        save_file(state, path / "model.safetensors")
    else:
        names = list(state)
        weight_map = {}
        for i in range(shards):
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: state[n] for n in names[i::shards]}
            save_file(part, path / fname)
            weight_map.update(dict.fromkeys(part, fname))
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


def model_state(family: str = "llama", seed: int = 0, dtype=torch.float32, **overrides) -> tuple[dict, dict]:
    """(state dict, config dict) of a tiny random-init model of ``family``."""
    from prism_analysis.tiny import build_model

    model = build_model(family, seed=seed, dtype=dtype, **overrides)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, model.config.to_dict()


PROSE = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A journey of a thousand miles begins with a single step, they say.",
    "Numbers like 12, 345 and 6789 appear in many sentences about counting.",
    "Python functions return values; a def statement binds a name to code.",
    "Energy equals mass times the speed of light squared, wrote the physicist.",
    "Tom has 3 apples and buys 5 more, so now he has 8 apples in total.",
] * 4


_TOKENIZER = None


def save_planted_pair(tmp: Path) -> Path:
    """``tmp/a`` and ``tmp/b``: a tiny LLaMA checkpoint and a copy with one planted change, the last
    10 weights of layer 1's MLP up projection scaled by 1.03."""
    state, config = model_state("llama")
    new = {k: v.clone() for k, v in state.items()}
    new["model.layers.1.mlp.up_proj.weight"].view(-1)[-10:] *= 1.03
    save_state(state, tmp / "a", config)
    save_state(new, tmp / "b", config)
    return tmp


def tiny_tokenizer():
    """One small BPE tokenizer for all tests (trained once, in ~0.1 s)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        import pydoc_data.topics as topics

        from prism_analysis.tiny import train_tokenizer

        _TOKENIZER = train_tokenizer(list(topics.topics.values()) + PROSE, vocab_size=512)
    return _TOKENIZER


def save_model(
    path: Path, family: str = "llama", seed: int = 0, perturb: float = 0.0, dtype=torch.float32, **overrides
) -> Path:
    """A complete HF checkpoint (config, safetensors, tokenizer) of a tiny random model of ``family``;
    ``perturb`` > 0 adds seeded relative noise of that size to every weight."""
    from prism_analysis.tiny import build_model

    model = build_model(family, seed=seed, **overrides)
    if perturb:
        g = torch.Generator().manual_seed(seed + 1000)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=g) * p)
    model.to(dtype).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def peak_rss_growth(fn):
    """Run ``fn()`` while sampling this process's resident memory every 2 ms; returns ``(fn's
    result, peak RSS during the call minus RSS before it)`` in bytes."""
    import threading
    import time

    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    t = threading.Thread(target=sample)
    t.start()
    try:
        result = fn()
    finally:
        done.set()
        t.join()
    return result, peak[0] - base


def end_worker() -> None:
    """End a torchrun worker script that used FSDP2 over gloo, skipping the interpreter's teardown.

    After ``destroy_process_group`` FSDP2's device mesh still holds the gloo group; its C++
    destructor then runs during interpreter finalization and, about once in 30-60 runs on a busy
    2-core machine, aborts the process ("terminate called without an active exception", SIGABRT,
    no Python frame) after all the work is written. Everything is flushed here, then the process
    leaves with status 0 without finalization.
    """
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
