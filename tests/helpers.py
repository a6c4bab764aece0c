"""Test helpers: tiny random checkpoints written to disk, as users' checkpoints are."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


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
            weight_map.update({n: fname for n in part})
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


def model_state(family: str = "llama", seed: int = 0, dtype=torch.float32, **overrides) -> tuple[dict, dict]:
    """(state dict, config dict) of a tiny random-init model of ``family``."""
    from prism_train.models import build_model
    model = build_model(family, seed=seed, dtype=dtype, **overrides)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, model.config.to_dict()
