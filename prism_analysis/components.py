"""Tensor name -> (layer index, component), for LLaMA, Granite, Mistral, Nemotron-H and Granite-4.

PRISM reports update statistics per component (paper Table 23, Figure 11 bottom): embeddings and
LM head, attention q/k/v/o, MLP gate/up/down, norms, and for attention/Mamba hybrids the Mamba
mixer's in_proj, out_proj, conv1d, SSM parameters (A_log, dt_bias, D) and its gated norm.

Examples of the names handled::

    model.embed_tokens.weight                  -> (None, "embed")        LLaMA/Granite/Mistral
    model.embeddings.weight                    -> (None, "embed")        Nemotron-H
    model.layers.3.self_attn.q_proj.weight     -> (3, "attn_q")
    model.layers.1.mixer.q_proj.weight         -> (1, "attn_q")          Nemotron-H attention block
    model.layers.2.mixer.up_proj.weight        -> (2, "mlp_up")          Nemotron-H MLP block
    model.layers.3.mixer.in_proj.weight        -> (3, "mamba_in_proj")   Nemotron-H / Granite-4 Mamba
    model.layers.0.shared_mlp.input_linear.weight  -> (0, "mlp_gate_up") Granite-4 fused gate+up
    model.layers.0.mamba.A_log                 -> (0, "mamba_ssm")
    model.norm_f.weight                        -> (None, "norm")
    lm_head.weight                             -> (None, "lm_head")
"""

from __future__ import annotations

import re

#: Every component name this module can return, in display order.
COMPONENTS = (
    "embed",
    "lm_head",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_o",
    "mlp_gate",
    "mlp_up",
    "mlp_gate_up",
    "mlp_down",
    "mlp_router",
    "mamba_in_proj",
    "mamba_out_proj",
    "mamba_conv1d",
    "mamba_ssm",
    "mamba_norm",
    "norm",
    "other",
)

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|decoder_layers)\.(\d+)\.")

# Ordered: the first rule whose pattern matches the name wins. Mamba rules come before the
# generic norm rule, since a Mamba mixer has its own gated norm ("mixer.norm.weight").
_RULES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (component, re.compile(pattern))
    for component, pattern in (
        ("embed", r"(embed_tokens|embeddings|wte|word_embeddings|tok_embeddings)\.weight$"),
        ("lm_head", r"(^|\.)(lm_head|output|embed_out)\.weight$"),
        ("attn_q", r"\.(q_proj|query|wq)\.(weight|bias)$"),
        ("attn_k", r"\.(k_proj|key|wk)\.(weight|bias)$"),
        ("attn_v", r"\.(v_proj|value|wv)\.(weight|bias)$"),
        ("attn_o", r"(self_attn|attention|attn|mixer)\.(o_proj|dense|wo|out_proj_attn)\.(weight|bias)$"),
        ("mamba_in_proj", r"(mixer|mamba)\.in_proj\.(weight|bias)$"),
        ("mamba_out_proj", r"(mixer|mamba)\.out_proj\.(weight|bias)$"),
        ("mamba_conv1d", r"(mixer|mamba)\.conv1d\.(weight|bias)$"),
        ("mamba_ssm", r"(mixer|mamba)\.(A_log|D|dt_bias)$"),
        ("mamba_norm", r"(mixer|mamba)\.norm\.weight$"),
        ("mlp_gate", r"\.(gate_proj|w1)\.(weight|bias)$"),
        ("mlp_up", r"\.(up_proj|w3)\.(weight|bias)$"),
        ("mlp_gate_up", r"\.(input_linear|gate_up_proj)\.(weight|bias)$"),
        ("mlp_down", r"\.(down_proj|w2|output_linear)\.(weight|bias)$"),
        ("mlp_router", r"\.(router|gate)\.(weight|bias|layer\.weight)$"),
        ("norm", r"(norm|ln_\w+|layernorm)[^.]*\.(weight|bias)$"),
    )
)


def layer_index(name: str) -> int | None:
    """Index of the decoder block a tensor belongs to, or None (embeddings, final norm, head)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def component(name: str) -> str:
    """Component of a tensor name (one of :data:`COMPONENTS`); unknown names give ``"other"``."""
    for comp, pattern in _RULES:
        if pattern.search(name):
            return comp
    return "other"


def classify(name: str) -> tuple[int | None, str]:
    """``(layer_index(name), component(name))``."""
    return layer_index(name), component(name)
