"""Every common architecture maps to components: tiny random models of each family's transformers config.

Names are checked as transformers holds them in memory (MoE experts stacked in 3-D tensors) and as
``save_pretrained`` writes them (the Hub's per-expert names); fused q/k/v projections are checked
against the model itself (the v part is what the attention multiplies with) and against planted
updates through ``audit``, ``compare_updates`` and ``analyse_trajectory``.
"""

import json

import pytest
import torch
import transformers
from helpers import save_state
from safetensors.torch import load_file

from prism_analysis.checkpoints.local import Checkpoint
from prism_analysis.components import COMPONENTS, classify, expert_index, parts
from prism_analysis.weights.audit import audit
from prism_analysis.weights.compare import compare_updates
from prism_analysis.weights.trajectory import analyse_trajectory

SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=256)
GQA = dict(SMALL, num_key_value_heads=2, head_dim=16)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)

#: family -> (transformers config class, its arguments)
FAMILIES = {
    "gpt2": ("GPT2Config", dict(n_layer=2, n_embd=64, n_head=4, vocab_size=256)),
    "gpt_neox": ("GPTNeoXConfig", SMALL),
    "qwen2": ("Qwen2Config", GQA),
    "qwen3": ("Qwen3Config", GQA),
    "gemma": ("GemmaConfig", GQA),
    "gemma2": ("Gemma2Config", GQA),
    "gemma3_text": ("Gemma3TextConfig", GQA),
    "olmo": ("OlmoConfig", SMALL),
    "olmo2": ("Olmo2Config", SMALL),
    "phi": ("PhiConfig", SMALL),
    "phi3": ("Phi3Config", dict(GQA, pad_token_id=0)),
    "mixtral": ("MixtralConfig", dict(GQA, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(GQA, **MOE, shared_expert_intermediate_size=64)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(GQA, **MOE)),
    "olmoe": ("OlmoeConfig", dict(SMALL, **MOE)),
    "granitemoe": ("GraniteMoeConfig", dict(SMALL, num_local_experts=4, num_experts_per_tok=2)),
    "granitemoehybrid": (
        "GraniteMoeHybridConfig",
        dict(
            SMALL,
            shared_intermediate_size=64,
            layer_types=["mamba", "attention"],
            num_key_value_heads=2,
            mamba_n_heads=4,
            mamba_d_head=32,
            mamba_d_state=8,
            mamba_n_groups=1,
            mamba_chunk_size=16,
            num_local_experts=4,
            num_experts_per_tok=2,
        ),
    ),
}
FUSED_QKV = {"gpt2", "gpt_neox", "phi3"}
N_EXPERTS = 4


def tiny(family: str, seed: int = 0):
    """A random-init causal LM of ``family`` (2 layers) and its config.json as a dict."""
    cls, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**kwargs))
    return model, json.loads(model.config.to_json_string())


def state_of(model) -> dict:
    """The model's state dict as independent tensors (tied weights are saved once each)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def saved_shapes(model, path) -> dict:
    """Name -> shape of the tensors ``save_pretrained`` writes (the Hub's naming)."""
    model.save_pretrained(path)
    return {name: tuple(info.shape) for name, info in Checkpoint(path).tensors.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_tensor_of_every_family_maps(family, tmp):
    model, config = tiny(family)
    in_memory = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    on_disk = saved_shapes(model, tmp / "saved")
    assert config["model_type"] == family
    for shapes in (in_memory, on_disk):
        others = [n for n in shapes if classify(n)[1] == "other"]
        assert others == [], others
        assert {classify(n)[0] for n in shapes} - {None} == {0, 1}
        found = [p for n, s in shapes.items() for p in parts(n, s, config)]
        assert {p.component for p in found} <= set(COMPONENTS) - {"other", "attn_qkv"}
        has_experts = "moe" in family or family == "mixtral"
        assert {p.expert for p in found} - {None} == (set(range(N_EXPERTS)) if has_experts else set())
        assert ("router" in {p.component for p in found}) == has_experts
    if family in FUSED_QKV:
        assert any(classify(n)[1] == "attn_qkv" for n in on_disk)  # split by parts(), not by name


@pytest.mark.parametrize("family", FAMILIES)
def test_parts_hold_every_element_once(family):
    model, config = tiny(family)
    for name, t in model.state_dict().items():
        seen = torch.zeros(t.shape, dtype=torch.int64)
        for p in parts(name, tuple(t.shape), config):
            if p.index is None:
                seen += 1
            else:
                seen[p.index] += 1
        assert bool((seen == 1).all()), name


@pytest.mark.parametrize("family", sorted(FUSED_QKV))
def test_v_part_is_what_the_attention_multiplies(family):
    """Zero the attn_v part of every fused projection: the attention output is then o_proj(0)."""
    model, config = tiny(family)
    with torch.no_grad():
        for name, p in model.named_parameters():
            for part in parts(name, tuple(p.shape), config):
                if part.component == "attn_v":
                    p[part.index] = 0
    attn, out_proj = {
        "gpt2": lambda m: (m.transformer.h[1].attn, m.transformer.h[1].attn.c_proj),
        "gpt_neox": lambda m: (m.gpt_neox.layers[1].attention, m.gpt_neox.layers[1].attention.dense),
        "phi3": lambda m: (m.model.layers[1].self_attn, m.model.layers[1].self_attn.o_proj),
    }[family](model)
    captured = []
    attn.register_forward_hook(lambda mod, args, out: captured.append(out[0]))
    model.eval()
    with torch.no_grad():
        model(torch.arange(8).unsqueeze(0))
        expected = out_proj(torch.zeros(1, 64))  # the output projection of all-zero values
    assert torch.allclose(captured[0], expected.expand_as(captured[0]), atol=1e-6)


def planted_v_pair(family: str, root, config_for_b=True):
    """Checkpoints A and B of ``family`` where B scales only the v block of layer 1's fused q/k/v
    (weight and bias) by 1.05; the v block located by hand from the transformers source."""
    model, config = tiny(family)
    a = state_of(model)
    b = {k: v.clone() for k, v in a.items()}
    hidden, heads = 64, 4
    if family == "gpt2":
        name = "transformer.h.1.attn.c_attn"
        b[name + ".weight"][:, 2 * hidden :] *= 1.05  # Conv1D [in, out]: q|k|v column blocks
        b[name + ".bias"][2 * hidden :] *= 1.05
    else:
        name = "gpt_neox.layers.1.attention.query_key_value"
        b[name + ".weight"].view(heads, 3, hidden // heads, hidden)[:, 2] *= 1.05  # rows (heads, 3, head_dim)
        b[name + ".bias"].view(heads, 3, hidden // heads)[:, 2] *= 1.05
    save_state(a, root / "a", config)
    save_state(b, root / "b", config if config_for_b else None)
    return root / "a", root / "b", name


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_audit_splits_fused_qkv_exactly(family, tmp):
    a, b, fused = planted_v_pair(family, tmp)
    res = audit(a, b, progress=False, device="cpu")
    comps = res.components.set_index("component")
    assert "attn_qkv" not in comps.index and res.unclassified == []
    assert comps.loc["attn_v", "fraction_changed_0.01"] > 0
    for c in ("attn_q", "attn_k"):
        assert comps.loc[c, "n_changed_0.001"] == 0 and comps.loc[c, "fraction_equal"] == 1.0
    # per-tensor rows: one per tensor, the parts' numel adds up to the tensor's
    rows = res.tensors.set_index("name")
    fused_rows = rows[rows["component"] == "attn_qkv"]
    assert len(fused_rows) == 4 and set(fused_rows["split_into"]) == {"attn_q attn_k attn_v"}
    assert comps.loc[["attn_q", "attn_k", "attn_v"], "numel"].sum() == fused_rows["numel"].sum()
    assert comps.loc["attn_q", "numel"] == comps.loc["attn_k", "numel"] == comps.loc["attn_v", "numel"]
    assert rows.loc[fused + ".weight", "n_changed_0.01"] == 64 * 64  # the whole v block of the weight
    # the total is the sum of the tensors and of the components
    total = res.total.iloc[0]
    assert total["numel"] == rows["numel"].sum() == comps["numel"].sum()
    assert total["n_changed_0.01"] == rows["n_changed_0.01"].sum() == comps["n_changed_0.01"].sum()
    assert total["sum_sq_diff"] == pytest.approx(comps["sum_sq_diff"].sum(), rel=1e-12)


def test_fused_qkv_without_a_config_is_attn_qkv(tmp):
    """Without config.json the layout is unknown: one attn_qkv component, never a guess."""
    planted_v_pair("gpt2", tmp, config_for_b=False)
    (tmp / "a" / "config.json").unlink()
    res = audit(tmp / "a", tmp / "b", progress=False, device="cpu")
    comps = res.components.set_index("component")
    assert "attn_qkv" in comps.index and "attn_v" not in comps.index
    assert comps.loc["attn_qkv", "fraction_changed_0.01"] > 0
    assert set(res.tensors.loc[res.tensors["component"] == "attn_qkv", "split_into"]) == {""}


def test_parts_refuse_a_config_that_does_not_match_the_shape():
    config = {"model_type": "gpt2", "n_embd": 32, "n_head": 4}
    assert [p.component for p in parts("h.0.attn.c_attn.weight", (64, 192), config)] == ["attn_qkv"]
    config = {"model_type": "gpt_bigcode", "n_embd": 64, "n_head": 4}  # another layout: not split
    assert [p.component for p in parts("h.0.attn.c_attn.weight", (64, 192), config)] == ["attn_qkv"]
    config = {"model_type": "gpt2", "n_embd": 64, "n_head": 4}
    assert [p.component for p in parts("h.0.attn.c_attn.weight", (64, 192), config)] == ["attn_q", "attn_k", "attn_v"]


def test_unclassified_names_are_listed(tmp):
    model, config = tiny("gpt2")
    a = state_of(model)
    a["transformer.h.0.attn.bias"] = torch.ones(1, 1, 8, 8)  # GPT-2's causal-mask buffer, as old files hold it
    save_state(a, tmp / "a", config)
    save_state(a, tmp / "b", config)
    res = audit(tmp / "a", tmp / "b", progress=False, device="cpu")
    assert res.unclassified == ["transformer.h.0.attn.bias"]
    assert res.summary()["unclassified"] == ["transformer.h.0.attn.bias"]
    assert "match no component rule" in res.format() and "transformer.h.0.attn.bias" in res.format()
    assert res.components["component"].iloc[-1] == "other"


@pytest.mark.parametrize("layout", ["stacked", "per_expert"])
def test_mixtral_experts_table_shows_the_one_expert_changed(layout, tmp):
    """Expert 2 of layer 1 changes its down projection; the experts table has it and nothing else."""
    model, config = tiny("mixtral")
    if layout == "stacked":  # transformers 5 in memory: mlp.experts.down_proj [experts, hidden, intermediate]
        a = state_of(model)
        name, b = "model.layers.1.mlp.experts.down_proj", {k: v.clone() for k, v in a.items()}
        b[name][2] *= 1.05
    else:  # save_pretrained / the Hub: block_sparse_moe.experts.<e>.w2.weight
        model.save_pretrained(tmp / "saved")
        a = load_file(tmp / "saved" / "model.safetensors")
        name, b = "model.layers.1.block_sparse_moe.experts.2.w2.weight", {k: v.clone() for k, v in a.items()}
        b[name] *= 1.05
    save_state(a, tmp / "a", config)
    save_state(b, tmp / "b", config)
    res = audit(tmp / "a", tmp / "b", progress=False, device="cpu")
    ex = res.experts.set_index(["layer", "expert"])
    assert list(ex.index) == [(layer, e) for layer in (0, 1) for e in range(N_EXPERTS)]
    changed = ex[ex["n_changed_0.01"] > 0]
    assert list(changed.index) == [(1, 2)]
    assert ex["numel"].nunique() == 1  # every expert the same size
    expert_tensors = res.tensors[res.tensors["name"].str.contains(r"\.experts\.")]
    assert ex["numel"].sum() == expert_tensors["numel"].sum()
    assert "router" in set(res.components["component"]) and res.unclassified == []
    assert res.components.set_index("component").loc["mlp_down", "n_changed_0.01"] > 0
    if layout == "per_expert":
        assert res.tensors.set_index("name").loc[name, "expert"] == 2 == expert_index(name)
    s = res.summary()
    assert s["experts"]["1"]["2"]["fraction_changed"]["0.01"] > 0 and s["experts"]["0"]["2"]["numel"] > 0
    res.save(tmp / "out", figure=False)
    assert (tmp / "out" / "experts.csv").is_file()


def test_dense_model_has_no_experts_table(tmp):
    model, config = tiny("qwen2")
    save_state(state_of(model), tmp / "a", config)
    save_state(state_of(model), tmp / "b", config)
    res = audit(tmp / "a", tmp / "b", progress=False, device="cpu")
    assert res.experts.empty and res.summary()["experts"] == {}
    assert res.tensors["expert"].isna().all()
    res.save(tmp / "out", figure=False)
    assert not (tmp / "out" / "experts.csv").exists()


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_compare_and_trajectory_group_a_split_tensor_as_the_audit(family, tmp):
    a, b, _ = planted_v_pair(family, tmp)
    res = audit(a, b, progress=False, device="cpu")
    cmp = compare_updates(a, b, a, b, progress=False, device="cpu").table.set_index("group")
    traj = analyse_trajectory([a, b], progress=False, device="cpu")
    audit_comps = list(res.components["component"])
    assert list(cmp.index) == ["total", *audit_comps]
    assert [c for c in traj.table["component"].unique() if c != "total"] == audit_comps
    numel = res.components.set_index("component")["numel"]
    for c in audit_comps:
        assert cmp.loc[c, "numel"] == numel[c]
    assert cmp.loc["attn_v", "fraction_changed_1"] > 0 and cmp.loc["attn_v", "cosine"] == pytest.approx(1.0)
    assert cmp.loc["attn_q", "fraction_changed_1"] == 0 == cmp.loc["attn_k", "fraction_changed_1"]
    assert traj.series("attn_v", "fraction_changed_0.01")[-1] > 0
    assert traj.series("attn_q", "fraction_changed_0.01")[-1] == 0 == traj.series("attn_k", "normalized_l2")[-1]
