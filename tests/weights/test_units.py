"""Heads and neurons of one tensor (prism_analysis.units): planted changes land on their unit alone."""

import json

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from prism_analysis.metrics import changed_mask
from prism_analysis.weights.units import unit_stats, unit_table

SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=256)
GQA = dict(SMALL, num_key_value_heads=2, head_dim=16)
CONFIGS = {
    "llama": ("LlamaConfig", GQA),
    "gpt2": ("GPT2Config", dict(n_layer=2, n_embd=64, n_head=4, vocab_size=256)),
    "gpt_neox": ("GPTNeoXConfig", SMALL),
    "phi3": ("Phi3Config", dict(GQA, pad_token_id=0)),
    "mixtral": ("MixtralConfig", dict(GQA, num_local_experts=4, num_experts_per_tok=2)),
}


def tiny(family: str):
    cls, kwargs = CONFIGS[family]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**kwargs))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, json.loads(model.config.to_json_string())


def units_of(a: dict, b: dict, config: dict):
    rows = [r for name in a for r in unit_stats(name, a[name], b[name], config, thresholds=(0.001, 0.01))]
    return rows, unit_table(rows)


def assert_only(table, layer, component, unit, expert=None):
    """The planted unit ranks first; every other unit is exactly unchanged."""
    top = table.iloc[0]
    assert (top["layer"], top["component"], top["unit"]) == (layer, component, unit), table.head()
    assert pd_na(top["expert"]) if expert is None else top["expert"] == expert
    assert top["sum_sq_diff"] > 0 and top["n_changed_0.01"] > 0
    rest = table.iloc[1:]
    assert (rest["sum_sq_diff"] == 0).all() and (rest["n_changed_0.001"] == 0).all()
    assert (rest["n_equal"] == rest["numel"]).all()


def pd_na(x) -> bool:
    import pandas as pd

    return x is None or x is pd.NA or (isinstance(x, float) and x != x)


def test_one_head_of_o_proj(tmp):
    a, config = tiny("llama")
    b = {k: v.clone() for k, v in a.items()}
    b["model.layers.1.self_attn.o_proj.weight"][:, 2 * 16 : 3 * 16] *= 1.05  # head 2's columns
    _, table = units_of(a, b, config)
    assert_only(table, 1, "attn_o", 2)
    heads = table[table["kind"] == "head"]
    assert len(heads) == 2 * (4 + 2 + 2 + 4)  # layers x (q heads, k kv-heads, v kv-heads, o heads)
    o = heads[(heads["component"] == "attn_o") & (heads["layer"] == 1)].set_index("unit")
    assert o.loc[2, "numel"] == 64 * 16
    d = (b["model.layers.1.self_attn.o_proj.weight"] - a["model.layers.1.self_attn.o_proj.weight"]).double()
    assert o.loc[2, "sum_sq_diff"] == pytest.approx(float((d * d).sum()), rel=1e-12)


def test_gqa_kv_heads_are_their_own(tmp):
    a, config = tiny("llama")
    b = {k: v.clone() for k, v in a.items()}
    b["model.layers.0.self_attn.k_proj.weight"][16:32] += 0.01  # kv head 1
    _, table = units_of(a, b, config)
    assert_only(table, 0, "attn_k", 1)
    k = table[(table["component"] == "attn_k") & (table["layer"] == 0)]
    assert sorted(k["unit"]) == [0, 1] and set(k["numel"]) == {16 * 64}


def test_one_mlp_neuron(tmp):
    a, config = tiny("llama")
    b = {k: v.clone() for k, v in a.items()}
    b["model.layers.0.mlp.down_proj.weight"][:, 77] *= 1.02  # neuron 77's column
    _, table = units_of(a, b, config)
    assert_only(table, 0, "mlp_down", 77)
    b = {k: v.clone() for k, v in a.items()}
    b["model.layers.1.mlp.gate_proj.weight"][5] *= 1.02  # neuron 5's row
    _, table = units_of(a, b, config)
    assert_only(table, 1, "mlp_gate", 5)
    assert len(table[(table["component"] == "mlp_gate") & (table["layer"] == 1)]) == 128


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "phi3"])
def test_fused_qkv_head(tmp, family):
    """The v rows (or columns) of head 1 of a fused projection, located by hand from the transformers source."""
    a, config = tiny(family)
    b = {k: v.clone() for k, v in a.items()}
    if family == "gpt2":
        b["transformer.h.1.attn.c_attn.weight"][:, 2 * 64 + 16 : 2 * 64 + 32] *= 1.05  # Conv1D [in, q|k|v]
        b["transformer.h.1.attn.c_attn.bias"][2 * 64 + 16 : 2 * 64 + 32] += 0.1
        unit = 1
    elif family == "gpt_neox":
        b["gpt_neox.layers.1.attention.query_key_value.weight"].view(4, 3, 16, 64)[1, 2] *= 1.05  # (heads, 3, hd)
        unit = 1
    else:
        b["model.layers.1.self_attn.qkv_proj.weight"][64 + 32 + 16 : 64 + 32 + 32] *= 1.05  # q 64 | k 32 | v 32 rows
        unit = 1  # kv head 1
    rows, table = units_of(a, b, config)
    assert_only(table, 1, "attn_v", unit)
    # every element of the fused tensor belongs to exactly one head
    fused = next(n for n in a if n.endswith(("c_attn.weight", "query_key_value.weight", "qkv_proj.weight")))
    assert sum(r["numel"] for r in rows if r["name"] == fused) == a[fused].numel()


def test_gpt2_conv1d_neurons_lie_along_the_other_dimension(tmp):
    a, config = tiny("gpt2")
    b = {k: v.clone() for k, v in a.items()}
    b["transformer.h.0.mlp.c_fc.weight"][:, 9] *= 1.05  # Conv1D [in, out]: neuron 9 is a column
    _, table = units_of(a, b, config)
    assert_only(table, 0, "mlp_up", 9)
    b = {k: v.clone() for k, v in a.items()}
    b["transformer.h.0.attn.c_proj.weight"][3 * 16 : 4 * 16] *= 1.05  # attention output: head 3's rows
    _, table = units_of(a, b, config)
    assert_only(table, 0, "attn_o", 3)


def test_moe_expert_neuron_of_a_stacked_gate_up(tmp):
    a, config = tiny("mixtral")
    name = next(n for n in a if n.endswith("layers.1.mlp.experts.gate_up_proj"))
    b = {k: v.clone() for k, v in a.items()}
    inter = a[name].shape[1] // 2
    b[name][2, inter + 5] *= 1.05  # expert 2, the up row of neuron 5
    rows, table = units_of(a, b, config)
    assert_only(table, 1, "mlp_gate_up", 5, expert=2)
    top = table.iloc[0]
    assert top["numel"] == 2 * a[name].shape[2]  # the neuron's gate row and up row
    assert sum(r["numel"] for r in rows if r["name"] == name) == a[name].numel()


def test_changed_rule_is_metrics_rule():
    a = torch.tensor([[0.0, 1.0, float("nan"), 2.0], [0.0, -0.0, 3.0, float("inf")]])
    b = torch.tensor([[0.0, 1.0 + 2e-3, float("nan"), 2.03], [1e-30, 0.0, 3.0, 1.0]])
    config = {"num_attention_heads": 2, "head_dim": 1, "hidden_size": 2}
    rows = unit_stats("model.layers.0.self_attn.q_proj.weight", a, b, config, thresholds=(0.001, 0.01))
    for h, row in enumerate(rows):
        eq = a[h].view(torch.int32) == b[h].view(torch.int32)
        for tau in (0.001, 0.01):
            assert row[f"n_changed_{tau!r}"] == int(changed_mask(a[h].double(), b[h].double(), tau, eq).sum())
    assert [r["n_nonfinite"] for r in rows] == [1, 1]
    assert rows[1]["sum_sq_diff"] == pytest.approx(1e-60)  # the inf element is left out of the sums


def test_tensors_without_units_give_no_rows():
    a, config = tiny("llama")
    for name in ("model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "lm_head.weight"):
        assert unit_stats(name, a[name], a[name], config) == []
    # a shape that the config's head geometry does not explain: no rows, never a guess
    bad = {"num_attention_heads": 3, "hidden_size": 64, "head_dim": 7}
    name = "model.layers.0.self_attn.q_proj.weight"
    assert unit_stats(name, a[name], a[name], bad) == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 1e300, allow_nan=False) | st.just(0.0), st.floats(0, 1e300, allow_nan=False) | st.just(0.0)
        ),
        min_size=1,
        max_size=20,
    )
)
def test_normalized_l2_of_many_units_is_the_scalar_definition(pairs):
    from prism_analysis.metrics import normalized_l2
    from prism_analysis.weights.units import normalized_l2_of

    d, a = (np.array(x, dtype=np.float64) for x in zip(*pairs))
    assert normalized_l2_of(d, a).tolist() == [normalized_l2(x, y) for x, y in pairs]


#: sums of squares as multiples of 1/4: exact in any order (pandas adds a group with Kahan
#: summation, unit_table in row order; they agree exactly for real audits' groups of one or two rows)
QUARTERS = st.integers(0, 16).map(lambda i: i / 4)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([None, 0, 1, 11]), st.sampled_from(["attn_q", "mlp_up"]),
                          st.sampled_from([None, 0, 3]), st.sampled_from(["head", "neuron"]), st.integers(0, 4),
                          QUARTERS, QUARTERS, st.integers(0, 9)), min_size=1, max_size=40))  # fmt: skip
def test_unit_table_equals_a_pandas_group_by(rows):
    """unit_table's numpy grouping against pandas' group-by written here: the same sums, keys, order
    (largest normalized L2 first, ties in key order with no layer / expert first) and dtypes, from
    rows, a table or the columns of unit_arrays."""
    import pandas as pd

    keys = ["layer", "component", "expert", "kind", "unit"]
    df = pd.DataFrame(
        [
            dict(
                zip(keys, r[:5]),
                name="t",
                numel=10,
                sum_sq_diff=r[5],
                sum_sq_a=r[6],
                n_equal=r[7],
                **{"n_changed_0.01": r[7]},
            )
            for r in rows
        ]
    )
    g = (
        df.fillna({"layer": -1, "expert": -1})
        .groupby(keys, sort=True)[["numel", "sum_sq_diff", "sum_sq_a", "n_equal", "n_changed_0.01"]]
        .sum()
        .reset_index()
    )
    g[["layer", "expert"]] = g[["layer", "expert"]].astype("Int64").replace(-1, pd.NA)
    with np.errstate(divide="ignore", invalid="ignore"):
        nl2 = np.sqrt(g["sum_sq_diff"]) / np.sqrt(g["sum_sq_a"])
    g["normalized_l2"] = np.where(g["sum_sq_a"] > 0, nl2, np.where(g["sum_sq_diff"] == 0, 0.0, np.inf))
    g["fraction_changed_0.01"] = g["n_changed_0.01"] / g["numel"]
    expected = g.sort_values("normalized_l2", ascending=False, kind="stable").reset_index(drop=True)
    arrays = {c: df[c].to_numpy(dtype=object if c in ("layer", "component", "expert", "kind") else None) for c in df}
    for given_as in (df, df.to_dict("records"), arrays):
        table = unit_table(given_as)
        import pandas.testing

        pandas.testing.assert_frame_equal(table, expected, check_exact=True, check_dtype=False)
        assert list(table.dtypes.astype(str)[["layer", "expert", "unit", "numel"]]) == [
            "Int64",
            "Int64",
            "int64",
            "int64",
        ]
