import pytest

from prism_analysis.components import COMPONENTS, classify, component, expert_index, layer_index, parts
from prism_analysis.tiny import FAMILIES, build_model

CASES = [
    ("model.embed_tokens.weight", None, "embed"),
    ("model.embeddings.weight", None, "embed"),
    ("lm_head.weight", None, "lm_head"),
    ("model.norm.weight", None, "norm"),
    ("model.norm_f.weight", None, "norm"),
    ("model.layers.3.self_attn.q_proj.weight", 3, "attn_q"),
    ("model.layers.12.self_attn.k_proj.weight", 12, "attn_k"),
    ("model.layers.0.self_attn.v_proj.weight", 0, "attn_v"),
    ("model.layers.7.self_attn.o_proj.weight", 7, "attn_o"),
    ("model.layers.7.mlp.gate_proj.weight", 7, "mlp_gate"),
    ("model.layers.7.mlp.up_proj.weight", 7, "mlp_up"),
    ("model.layers.7.mlp.down_proj.weight", 7, "mlp_down"),
    ("model.layers.2.input_layernorm.weight", 2, "norm"),
    ("model.layers.2.post_attention_layernorm.weight", 2, "norm"),
    # Nemotron-H: every block is a "mixer" (mamba, attention or MLP)
    ("model.layers.3.mixer.in_proj.weight", 3, "mamba_in_proj"),
    ("model.layers.3.mixer.out_proj.weight", 3, "mamba_out_proj"),
    ("model.layers.3.mixer.conv1d.weight", 3, "mamba_conv1d"),
    ("model.layers.3.mixer.conv1d.bias", 3, "mamba_conv1d"),
    ("model.layers.3.mixer.A_log", 3, "mamba_ssm"),
    ("model.layers.3.mixer.dt_bias", 3, "mamba_ssm"),
    ("model.layers.3.mixer.D", 3, "mamba_ssm"),
    ("model.layers.3.mixer.norm.weight", 3, "mamba_norm"),
    ("model.layers.3.norm.weight", 3, "norm"),
    ("model.layers.1.mixer.q_proj.weight", 1, "attn_q"),
    ("model.layers.1.mixer.o_proj.weight", 1, "attn_o"),
    ("model.layers.2.mixer.up_proj.weight", 2, "mlp_up"),
    ("model.layers.2.mixer.down_proj.weight", 2, "mlp_down"),
    # Granite-4 hybrid (GraniteMoeHybrid): mamba + fused shared MLP
    ("model.layers.0.mamba.in_proj.weight", 0, "mamba_in_proj"),
    ("model.layers.0.mamba.A_log", 0, "mamba_ssm"),
    ("model.layers.0.mamba.norm.weight", 0, "mamba_norm"),
    ("model.layers.0.shared_mlp.input_linear.weight", 0, "mlp_gate_up"),
    ("model.layers.0.shared_mlp.output_linear.weight", 0, "mlp_down"),
    # GPT-2 (Hub files have no "transformer." prefix)
    ("transformer.wte.weight", None, "embed"),
    ("wpe.weight", None, "embed"),
    ("h.3.ln_1.weight", 3, "norm"),
    ("transformer.h.3.attn.c_attn.weight", 3, "attn_qkv"),
    ("transformer.h.3.attn.c_proj.bias", 3, "attn_o"),
    ("transformer.h.3.mlp.c_fc.weight", 3, "mlp_up"),
    ("transformer.h.3.mlp.c_proj.weight", 3, "mlp_down"),
    ("transformer.ln_f.bias", None, "norm"),
    # GPT-NeoX / Pythia
    ("gpt_neox.embed_in.weight", None, "embed"),
    ("gpt_neox.layers.5.attention.query_key_value.bias", 5, "attn_qkv"),
    ("gpt_neox.layers.5.attention.dense.weight", 5, "attn_o"),
    ("gpt_neox.layers.5.mlp.dense_h_to_4h.weight", 5, "mlp_up"),
    ("gpt_neox.layers.5.mlp.dense_4h_to_h.bias", 5, "mlp_down"),
    ("gpt_neox.final_layer_norm.weight", None, "norm"),
    ("embed_out.weight", None, "lm_head"),
    # Qwen3 / OLMo-2 / Gemma-3 q/k norms, Gemma-2 sandwich norms
    ("model.layers.4.self_attn.q_norm.weight", 4, "norm"),
    ("model.layers.4.self_attn.k_norm.weight", 4, "norm"),
    ("model.layers.4.pre_feedforward_layernorm.weight", 4, "norm"),
    # Phi, Phi-3
    ("model.layers.1.self_attn.dense.weight", 1, "attn_o"),
    ("model.layers.1.mlp.fc1.bias", 1, "mlp_up"),
    ("model.layers.1.mlp.fc2.weight", 1, "mlp_down"),
    ("model.final_layernorm.weight", None, "norm"),
    ("lm_head.bias", None, "lm_head"),
    ("model.layers.1.self_attn.qkv_proj.weight", 1, "attn_qkv"),
    ("model.layers.1.mlp.gate_up_proj.weight", 1, "mlp_gate_up"),
    # MoE: Mixtral (Hub and transformers 5), Qwen-MoE, Granite MoE
    ("model.layers.6.block_sparse_moe.gate.weight", 6, "router"),
    ("model.layers.6.block_sparse_moe.experts.7.w1.weight", 6, "mlp_gate"),
    ("model.layers.6.block_sparse_moe.experts.7.w3.weight", 6, "mlp_up"),
    ("model.layers.6.block_sparse_moe.experts.7.w2.weight", 6, "mlp_down"),
    ("model.layers.6.mlp.gate.weight", 6, "router"),
    ("model.layers.6.mlp.experts.gate_up_proj", 6, "mlp_gate_up"),
    ("model.layers.6.mlp.experts.down_proj", 6, "mlp_down"),
    ("model.layers.6.mlp.experts.12.gate_proj.weight", 6, "mlp_gate"),
    ("model.layers.6.mlp.shared_expert.up_proj.weight", 6, "mlp_up"),
    ("model.layers.6.mlp.shared_expert_gate.weight", 6, "router"),
    ("model.layers.6.block_sparse_moe.router.layer.weight", 6, "router"),
    ("model.layers.6.block_sparse_moe.input_linear.weight", 6, "mlp_gate_up"),
    # never a guess
    ("something.unusual", None, "other"),
    ("transformer.h.0.attn.bias", 0, "other"),  # GPT-2's causal-mask buffer in old files
]


@pytest.mark.parametrize("name,layer,comp", CASES)
def test_known_names(name, layer, comp):
    assert classify(name) == (layer, comp)


@pytest.mark.parametrize(
    "name,expert",
    [
        ("model.layers.6.block_sparse_moe.experts.7.w1.weight", 7),
        ("model.layers.6.mlp.experts.12.down_proj.weight", 12),
        ("model.layers.6.mlp.shared_expert.down_proj.weight", None),
        ("model.layers.6.mlp.experts.down_proj", None),  # a stack: one part per expert instead
        ("model.layers.6.self_attn.q_proj.weight", None),
    ],
)
def test_expert_index(name, expert):
    assert expert_index(name) == expert


def test_parts_of_an_expert_stack_and_of_a_plain_tensor():
    stack = parts("model.layers.6.mlp.experts.down_proj", (3, 8, 4))
    assert [(p.component, p.expert, p.index) for p in stack] == [("mlp_down", e, (e,)) for e in range(3)]
    stack = parts("model.layers.6.block_sparse_moe.input_linear.weight", (2, 16, 8))
    assert [(p.component, p.expert) for p in stack] == [("mlp_gate_up", 0), ("mlp_gate_up", 1)]
    (plain,) = parts("model.layers.6.shared_mlp.input_linear.weight", (16, 8))
    assert (plain.component, plain.expert, plain.index) == ("mlp_gate_up", None, None)
    (one,) = parts("model.layers.6.mlp.experts.5.w2.weight", (4, 8))
    assert (one.component, one.expert, one.index) == ("mlp_down", 5, None)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_of_every_family_is_classified(family):
    model = build_model(family)
    names = [n for n, _ in model.named_parameters()]
    assert all(component(n) in COMPONENTS and component(n) != "other" for n in names), [
        n for n in names if component(n) == "other"
    ]
    n_layers = model.config.num_hidden_layers
    assert {layer_index(n) for n in names} - {None} == set(range(n_layers))


def test_granite4_hybrid_parameters_are_classified():
    from transformers import AutoModelForCausalLM, GraniteMoeHybridConfig

    cfg = GraniteMoeHybridConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        shared_intermediate_size=64,
        num_hidden_layers=2,
        layer_types=["mamba", "attention"],
        num_attention_heads=2,
        num_key_value_heads=1,
        mamba_n_heads=4,
        mamba_d_head=16,
        mamba_d_state=8,
        mamba_n_groups=1,
        mamba_chunk_size=16,
        num_local_experts=0,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    others = [n for n, _ in model.named_parameters() if component(n) == "other"]
    assert others == []
