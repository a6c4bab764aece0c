"""`prism audit --units heads,neurons`: planted changes land on exactly their head and neuron."""

import json

import pandas as pd
from helpers import save_state

from prism_analysis.tiny import build_model
from prism_analysis.weights.audit import audit
from prism_cli import main


def _pair(tmp, plant):
    model = build_model("llama", seed=0)  # 4 heads of 32, 2 kv heads, 4 layers, 384 neurons
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = {k: v.clone() for k, v in a.items()}
    plant(b)
    save_state(a, tmp / "a", model.config.to_dict())
    save_state(b, tmp / "b", model.config.to_dict())
    return a, b


def test_a_planted_head_and_neuron_rank_first_and_nothing_else_moves(tmp):
    def plant(b):
        b["model.layers.2.self_attn.o_proj.weight"][:, 32:64] *= 1.5  # head 1's columns
        b["model.layers.1.mlp.down_proj.weight"][:, 7] += 0.1  # neuron 7's column

    a, b = _pair(tmp, plant)
    res = audit(tmp / "a", tmp / "b", progress=False, units=("heads", "neurons"))
    h, n = res.heads, res.neurons
    top = h.iloc[0]
    assert (top["layer"], top["component"], top["head"]) == (2, "attn_o", 1)
    # independent float64 reference: ||dW|| / ||W|| over exactly that head's columns
    wa = a["model.layers.2.self_attn.o_proj.weight"][:, 32:64].double()
    wb = b["model.layers.2.self_attn.o_proj.weight"][:, 32:64].double()
    assert abs(top["normalized_l2"] - ((wb - wa).norm() / wa.norm()).item()) < 1e-12
    assert abs(top["normalized_l2"] - 0.5) < 1e-6
    assert top["fraction_changed"] == ((wb - wa).abs() > 0.01 * wa.abs()).double().mean().item()
    assert (h.iloc[1:]["normalized_l2"] == 0).all()  # every other head exactly unchanged
    first = n.iloc[0]
    assert (first["layer"], first["component"], first["neuron"]) == (1, "mlp_down", 7)
    col = a["model.layers.1.mlp.down_proj.weight"][:, 7].double()
    moved = b["model.layers.1.mlp.down_proj.weight"][:, 7].double()
    assert abs(first["normalized_l2"] - ((moved - col).norm() / col.norm()).item()) < 1e-12
    assert (n.iloc[1:]["normalized_l2"] == 0).all()
    assert len(h) == 4 * (4 + 2 + 2 + 4)  # q, k, v (GQA: 2 kv heads), o per layer
    assert len(n) == 4 * 3 * 384  # gate, up, down per neuron per layer


def test_the_cli_writes_heads_neurons_and_the_heatmap(tmp, capsys):
    _pair(tmp, lambda b: b["model.layers.0.self_attn.q_proj.weight"][64:96].mul_(2))
    out = tmp / "out"
    assert (
        main(["audit", str(tmp / "a"), str(tmp / "b"), "--units", "heads,neurons", "--out", str(out), "--quiet"]) == 0
    )
    heads = pd.read_csv(out / "heads.csv")
    assert {"layer", "head", "component", "normalized_l2", "fraction_changed"} <= set(heads.columns)
    assert tuple(heads.iloc[0][["layer", "component", "head"]]) == (0, "attn_q", 2)
    assert len(pd.read_csv(out / "neurons.csv")) == 100  # the top 100 by default
    assert (out / "heads_by_layer.png").is_file()
    assert json.loads((out / "summary.json").read_text())["total"]["numel"] > 0
    assert main(["audit", str(tmp / "a"), str(tmp / "b"), "--units", "experts"]) == 2
    assert "--units: unknown experts" in capsys.readouterr().err
