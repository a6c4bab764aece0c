"""The study's activation-level rows: the depth where the lens divergence rises, the promoted
tokens, and the two findings set beside CKA, on tables whose answers are known."""

import pandas as pd

from prism_train.study.findings import CKA_KEPT, diff_findings
from prism_train.study.report import lens_rise_layer, promoted_tokens


def test_lens_rise_layer_is_the_first_layer_at_half_the_maximum():
    layers = pd.DataFrame({"layer": [3, 0, 1, 2], "kl_ab": [0.8, 0.0, 0.1, 0.4]})
    assert lens_rise_layer(layers) == 2  # 0.4 >= 0.5 * 0.8, layer 1's 0.1 is not
    assert lens_rise_layer(layers.assign(kl_ab=0.0)) is None  # the lenses agree everywhere
    assert lens_rise_layer(layers.iloc[:0]) is None  # no lens


def test_promoted_tokens_are_the_last_layers_through_bs_head():
    rows = []
    for layer in (0, 2):
        for head in ("a", "b"):
            for direction in ("promoted", "suppressed"):
                for rank in (2, 1):
                    rows.append(["p", "all", layer, head, direction, rank, f"{head}{layer}{direction[0]}{rank}"])
    rows.append(["p", "first_5", 2, "b", "promoted", 1, "first"])
    lens = pd.DataFrame(rows, columns=["probe", "positions", "layer", "head", "direction", "rank", "token"])
    assert promoted_tokens(lens, "p", 2) == ["'b2p1'", "'b2p2'"]


def _pair(kl, low, high, rise=1):
    bench = {"math_easy": {"mean_kl": kl, "mean_kl_ci_low": low, "mean_kl_ci_high": high}, "code": {}}
    bench["code"] = dict(bench["math_easy"])
    for v in bench.values():
        v.update(agreement=0.9, lens_rise_layer=rise, n_layers=4, promoted=["'x'"])
    return {"benchmarks": bench, "top_heads": [{"layer": 3, "head": 1, "component": "attn", "normalized_l2": 0.1}]}


def test_diff_findings_judge_their_criteria():
    cka = {"mid_mcs_vs_rl_mid_mcs": {"rl_prompts": {"min_cka": CKA_KEPT + 0.001}}}
    diff = {"mid_mcs->rl_mid_mcs": _pair(0.01, 0.005, 0.02, rise=3), "base->mid_mcs": _pair(2.0, 1.5, 2.5)}
    kept, far = diff_findings(cka, diff)
    assert kept["reproduced"] and far["reproduced"]
    assert "rises at layer 3 of 4" in kept["ours"] and "L3.H1" in kept["ours"]
    assert "math_easy 200x" in far["ours"]
    # outputs that did not move (an interval touching 0), intervals that overlap: not reproduced
    diff["mid_mcs->rl_mid_mcs"] = _pair(0.01, 0.0, 0.02)
    diff["base->mid_mcs"] = _pair(0.03, 0.015, 0.05)
    kept, far = diff_findings(cka, diff)
    assert not kept["reproduced"] and not far["reproduced"]
    # representations not kept: not reproduced, however much the outputs moved
    low = {"mid_mcs_vs_rl_mid_mcs": {"rl_prompts": {"min_cka": CKA_KEPT - 0.1}}}
    assert not diff_findings(low, {"mid_mcs->rl_mid_mcs": _pair(1, 0.5, 2)})[0]["reproduced"]
    # RL moved nothing: the ratio is infinite, not an error; a run without the diff has no rows
    zero = _pair(0.0, 0.0, 0.0)
    (far,) = diff_findings({}, {"mid_mcs->rl_mid_mcs": zero, "base->mid_mcs": _pair(1, 0.5, 2)})
    assert "math_easy infx" in far["ours"] and far["reproduced"]
    assert diff_findings(cka, {}) == []
