"""Tensor name -> (layer index, component), and the parts of fused tensors, for common LM families.

PRISM reports update statistics per component (paper Table 23, Figure 11 bottom): embeddings and
LM head, attention q/k/v/o, MLP gate/up/down, MoE routers, norms, and for attention/Mamba hybrids
the Mamba mixer's in_proj, out_proj, conv1d, SSM parameters (A_log, dt_bias, D) and its gated norm.

Families covered (names as transformers 5 holds them in memory and as checkpoints on the Hub store
them): LLaMA, Granite, Mistral, Nemotron-H, Granite-4 hybrid, GPT-2, GPT-NeoX/Pythia, Qwen2/Qwen3,
Gemma 1-3, OLMo/OLMo-2, Phi, Phi-3, and MoE models (Mixtral, Qwen2-MoE/Qwen3-MoE, OLMoE, Granite MoE).

The rules, in order (the first rule whose pattern matches a name wins):

- One name, one component, by the module it belongs to. Position embeddings (GPT-2 ``wpe``) are
  ``embed``; the first and second projections of a non-gated MLP (GPT-2 ``c_fc``/``mlp.c_proj``,
  GPT-NeoX ``dense_h_to_4h``/``dense_4h_to_h``, Phi ``fc1``/``fc2``) are ``mlp_up``/``mlp_down``.
- A fused q/k/v projection is ``attn_qkv`` unless :func:`parts` can split it exactly: GPT-2
  ``attn.c_attn``, GPT-NeoX ``attention.query_key_value`` and Phi-3 ``self_attn.qkv_proj`` are split
  into ``attn_q``/``attn_k``/``attn_v`` when config.json names the architecture and gives head counts
  that match the tensor's shape. GPT-2's Conv1D weights are stored transposed (``[in, out]``); the
  statistics are element-wise, so this matters only for where the q/k/v blocks lie (columns).
  A fused gate/up projection stays ``mlp_gate_up``.
- MoE: the router (Mixtral ``block_sparse_moe.gate``, ``mlp.gate`` of MoE blocks, Granite MoE
  ``router``, Qwen-MoE ``shared_expert_gate``) is ``router``; an expert's projections are the MLP
  components with an expert index, from the name (``experts.3.w1.weight``) or, for the stacked
  tensors of transformers 5 (``mlp.experts.gate_up_proj``, leading dimension = expert) and Granite
  MoE (``block_sparse_moe.input_linear.weight``), one part per slice along dim 0. Qwen-MoE's shared
  expert is the MLP components without an expert index.
- A name no rule knows is ``other`` -- never a guess. The audit lists such names.

Examples of the names handled::

    model.embed_tokens.weight                  -> (None, "embed")        LLaMA/Granite/Mistral/Qwen/Gemma/OLMo/Phi
    transformer.wpe.weight                     -> (None, "embed")        GPT-2 position embeddings
    model.layers.3.self_attn.q_proj.weight     -> (3, "attn_q")
    transformer.h.0.attn.c_attn.weight         -> (0, "attn_qkv")        split into q/k/v by parts()
    gpt_neox.layers.1.attention.query_key_value.weight -> (1, "attn_qkv")  split into q/k/v by parts()
    model.layers.1.mixer.q_proj.weight         -> (1, "attn_q")          Nemotron-H attention block
    model.layers.2.mixer.up_proj.weight        -> (2, "mlp_up")          Nemotron-H MLP block
    model.layers.3.mixer.in_proj.weight        -> (3, "mamba_in_proj")   Nemotron-H / Granite-4 Mamba
    model.layers.0.shared_mlp.input_linear.weight  -> (0, "mlp_gate_up") Granite-4 fused gate+up
    model.layers.0.mamba.A_log                 -> (0, "mamba_ssm")
    model.layers.2.block_sparse_moe.gate.weight        -> (2, "router")  Mixtral
    model.layers.2.block_sparse_moe.experts.5.w2.weight -> (2, "mlp_down"), expert 5
    model.layers.2.mlp.experts.gate_up_proj    -> (2, "mlp_gate_up"), one part per expert
    model.norm_f.weight                        -> (None, "norm")
    lm_head.weight                             -> (None, "lm_head")
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Every component name this module can return, in display order.
COMPONENTS = (
    "embed",
    "lm_head",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_qkv",
    "attn_o",
    "mlp_gate",
    "mlp_up",
    "mlp_gate_up",
    "mlp_down",
    "router",
    "mamba_in_proj",
    "mamba_out_proj",
    "mamba_conv1d",
    "mamba_ssm",
    "mamba_norm",
    "norm",
    "other",
)

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|decoder_layers)\.(\d+)\.")
_EXPERT = re.compile(r"(?:^|\.)experts\.(\d+)\.")
# Tensors that hold every expert of a layer, stacked along dim 0: a parameter right on an
# ``experts`` module (transformers 5) and Granite MoE's expert projections.
_EXPERT_STACK = re.compile(r"\.experts\.\w+$|block_sparse_moe\.(input_linear|output_linear)\.weight$")

_P = r"\.(weight|bias)$"  # a module's weight or bias
_P_OR_BARE = r"(\.(weight|bias))?$"  # ... or a bare parameter (transformers 5 stacks: mlp.experts.down_proj)

# Ordered: the first rule whose pattern matches the name wins. Attention rules come before the
# MLP rules (attn.c_proj vs mlp.c_proj), Mamba rules before the generic norm rule, since a Mamba
# mixer has its own gated norm ("mixer.norm.weight").
_RULES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (component, re.compile(pattern))
    for component, pattern in (
        ("embed", r"(embed_tokens|embeddings|embed_in|wte|wpe|word_embeddings|tok_embeddings)\.weight$"),
        ("lm_head", r"(^|\.)(lm_head|output|embed_out)" + _P),
        ("attn_q", r"\.(q_proj|query|wq)" + _P),
        ("attn_k", r"\.(k_proj|key|wk)" + _P),
        ("attn_v", r"\.(v_proj|value|wv)" + _P),
        ("attn_qkv", r"\.(c_attn|query_key_value|qkv_proj)" + _P),
        ("attn_o", r"(self_attn|attention|attn|mixer)\.(o_proj|dense|wo|out_proj_attn|c_proj)" + _P),
        ("mamba_in_proj", r"(mixer|mamba)\.in_proj" + _P),
        ("mamba_out_proj", r"(mixer|mamba)\.out_proj" + _P),
        ("mamba_conv1d", r"(mixer|mamba)\.conv1d" + _P),
        ("mamba_ssm", r"(mixer|mamba)\.(A_log|D|dt_bias)$"),
        ("mamba_norm", r"(mixer|mamba)\.norm\.weight$"),
        ("mlp_gate", r"\.(gate_proj|w1)" + _P_OR_BARE),
        ("mlp_up", r"\.(up_proj|w3|c_fc|fc1|dense_h_to_4h)" + _P_OR_BARE),
        ("mlp_gate_up", r"\.(input_linear|gate_up_proj)" + _P_OR_BARE),
        ("mlp_down", r"\.(down_proj|w2|output_linear|fc2|dense_4h_to_h)" + _P_OR_BARE + r"|mlp\.c_proj" + _P),
        ("router", r"\.(router|gate)\.(weight|bias|layer\.weight)$|\.shared_expert_gate" + _P),
        ("norm", r"(norm|ln_\w+|layernorm)[^.]*" + _P),
    )
)


def layer_index(name: str) -> int | None:
    """Index of the decoder block a tensor belongs to, or None (embeddings, final norm, head)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def expert_index(name: str) -> int | None:
    """Index of the MoE expert a tensor belongs to by its name (``experts.3.``), else None."""
    m = _EXPERT.search(name)
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


@dataclass(frozen=True, eq=False)
class Part:
    """A piece of one tensor that belongs to one component (and maybe one expert).

    ``index`` selects the piece, ``tensor[index]``; None is the whole tensor.
    """

    component: str
    expert: int | None = None
    index: tuple | None = None

    def take(self, tensor):
        """The piece of ``tensor`` (any tensor of the shape :func:`parts` was given)."""
        return tensor if self.index is None else tensor[self.index]


def parts(name: str, shape: tuple[int, ...], config: dict | None = None) -> list[Part]:
    """The pieces of tensor ``name`` (of ``shape``) to group by component and expert; together
    they hold every element exactly once.

    ``config`` is the checkpoint's config.json (or None). A fused q/k/v projection whose layout the
    config pins down gives three parts (attn_q, attn_k, attn_v), one that it does not gives a single
    ``attn_qkv`` part; a stack of experts gives one part per expert; any other tensor is one part.
    """
    comp = component(name)
    if comp == "attn_qkv":
        return _qkv_parts(name, tuple(shape), config or {}) or [Part(comp)]
    if _EXPERT_STACK.search(name) and len(shape) >= 2:
        return [Part(comp, expert, (expert,)) for expert in range(shape[0])]
    return [Part(comp, expert_index(name))]


def _positive_int(config: dict, *keys: str) -> int | None:
    """The first of ``keys`` that config.json sets to a positive integer."""
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _qkv_parts(name: str, shape: tuple[int, ...], config: dict) -> list[Part] | None:
    """attn_q/attn_k/attn_v parts of a fused projection, or None when the config does not pin its layout.

    Only layouts read from the transformers source of an architecture named by ``model_type``:

    - ``gpt2`` ``attn.c_attn``: Conv1D, weight ``[hidden, 3 hidden]`` (stored transposed), bias
      ``[3 hidden]``; q, k, v are consecutive blocks of ``hidden`` along the last dimension.
    - ``gpt_neox`` ``attention.query_key_value``: Linear, weight ``[3 hidden, hidden]``, bias
      ``[3 hidden]``; the rows are laid out per head as ``(heads, 3, head_dim)``.
    - ``phi3`` ``self_attn.qkv_proj``: Linear, weight ``[(heads + 2 kv_heads) head_dim, hidden]``;
      rows are q (``heads * head_dim``), then k and v (``kv_heads * head_dim`` each).
    """
    kind = config.get("model_type")
    hidden = _positive_int(config, "hidden_size", "n_embd")
    heads = _positive_int(config, "num_attention_heads", "n_head")
    if hidden is None or heads is None:
        return None
    qkv = ("attn_q", "attn_k", "attn_v")
    if kind == "gpt2" and name.endswith(("attn.c_attn.weight", "attn.c_attn.bias")):
        if shape not in ((hidden, 3 * hidden), (3 * hidden,)):
            return None
        return [Part(c, index=(..., slice(i * hidden, (i + 1) * hidden))) for i, c in enumerate(qkv)]
    if kind == "gpt_neox" and name.endswith(("attention.query_key_value.weight", "attention.query_key_value.bias")):
        if hidden % heads or shape not in ((3 * hidden, hidden), (3 * hidden,)):
            return None
        import torch

        rows = torch.arange(3 * hidden).view(heads, 3, hidden // heads)
        return [Part(c, index=(rows[:, i].reshape(-1),)) for i, c in enumerate(qkv)]
    if kind == "phi3" and name.endswith(("self_attn.qkv_proj.weight", "self_attn.qkv_proj.bias")):
        head_dim = _positive_int(config, "head_dim") or (hidden // heads if hidden % heads == 0 else None)
        kv_heads = _positive_int(config, "num_key_value_heads") or heads
        if head_dim is None:
            return None
        q, kv = heads * head_dim, kv_heads * head_dim
        if shape not in ((q + 2 * kv, hidden), (q + 2 * kv,)):
            return None
        bounds = (0, q, q + kv, q + 2 * kv)
        return [Part(c, index=(slice(bounds[i], bounds[i + 1]),)) for i, c in enumerate(qkv)]
    return None
