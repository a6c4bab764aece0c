"""Tiny random models of PRISM's four families, and a tokenizer for them: for tests, examples and doctests.

PRISM studies LLaMA-3.1, Granite-3.3, Mistral and the Nemotron-H attention/Mamba2 hybrid. These
are the same architectures at 1-5M parameters, built from transformers configs (nothing is
downloaded), so a laptop CPU runs them in seconds and trains them in minutes (``prism_train``).
``build_model(family)`` returns a seeded random-init ``AutoModelForCausalLM``; ``train_tokenizer``
trains a byte-level BPE locally (digits split into single tokens; ``<pad>`` = 0, ``<s>`` = 1,
``</s>`` = 2, matching :func:`tiny_config`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and transformers load on use: FAMILIES is read by ``prism --help``
    import torch
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

#: The model families of the paper (``build_model``'s ``family``).
FAMILIES = ("llama", "granite", "mistral", "nemotron_h")
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
    from transformers import GraniteConfig, LlamaConfig, MistralConfig, NemotronHConfig

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
    family: str = DEFAULT_FAMILY, seed: int = 0, dtype: torch.dtype | None = None, **config_overrides
) -> torch.nn.Module:
    """A random-init causal LM of ``family`` (seeded, so the same seed gives the same weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(family, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    return model.to(dtype or torch.float32)


SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` tokens on ``texts`` (deterministic for the same input)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="right",
        model_max_length=4096,
    )
