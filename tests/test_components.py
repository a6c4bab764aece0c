import pytest

from prism_analysis.components import COMPONENTS, classify, component, layer_index
from prism_train.models import FAMILIES, build_model

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
    ("something.unusual", None, "other"),
]


@pytest.mark.parametrize("name,layer,comp", CASES)
def test_known_names(name, layer, comp):
    assert classify(name) == (layer, comp)


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
