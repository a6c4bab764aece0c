"""Tiny configurations of the paper's four model families, built from transformers configs.

PRISM studies LLaMA-3.1, Granite-3.3, Mistral and the Nemotron-H attention/Mamba2 hybrid. These
are the same architectures at 1-5M parameters, so a laptop CPU trains them in minutes.
``build_model(family)`` returns a random-init ``AutoModelForCausalLM``; the default is LLaMA.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    NemotronHConfig,
    PretrainedConfig,
)

from .config import FAMILIES

DEFAULT_FAMILY = "llama"


def tiny_config(
    family: str = DEFAULT_FAMILY,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    num_layers: int = 4,
    max_position_embeddings: int = 512,
    **overrides,
) -> PretrainedConfig:
    """A small config of ``family`` (``llama``, ``granite``, ``mistral`` or ``nemotron_h``)."""
    heads = max(1, hidden_size // 32)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        max_position_embeddings=max_position_embeddings,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if family == "llama":
        cfg = LlamaConfig(intermediate_size=hidden_size * 3, num_hidden_layers=num_layers, **common)
    elif family == "granite":
        cfg = GraniteConfig(
            intermediate_size=hidden_size * 3,
            num_hidden_layers=num_layers,
            embedding_multiplier=12.0,
            logits_scaling=8.0,
            residual_multiplier=0.22,
            attention_multiplier=1.0 / 32,
            **common,
        )
    elif family == "mistral":
        cfg = MistralConfig(
            intermediate_size=hidden_size * 3, num_hidden_layers=num_layers, sliding_window=None, **common
        )
    elif family == "nemotron_h":
        # Mamba2 / attention / MLP blocks, like Nemotron-H's hybrid pattern.
        pattern = (["mamba", "mlp", "full_attention", "mlp"] * num_layers)[: max(num_layers, 2)]
        cfg = NemotronHConfig(
            intermediate_size=hidden_size * 3,
            layers_block_type=pattern,
            head_dim=hidden_size // heads,
            ssm_state_size=16,
            mamba_num_heads=heads * 2,
            mamba_head_dim=hidden_size // heads,
            n_groups=1,
            chunk_size=32,
            **common,
        )
    else:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def build_model(
    family: str = DEFAULT_FAMILY, seed: int = 0, dtype: torch.dtype = torch.float32, **config_overrides
) -> torch.nn.Module:
    """A random-init causal LM of ``family`` (seeded, so the same seed gives the same weights)."""
    cfg = tiny_config(family, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    return model.to(dtype)
