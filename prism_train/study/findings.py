"""The study's findings: each claim of PRISM (and of "The Path Not Taken", RL's Razor) with the
paper's number, ours, and whether ours supports it at this scale, in the order report.md lists them.

A finding is a dict ``{"claim", "paper", "ours", "reproduced"}``, plus the test behind it (``diff``,
``ci95``, ``test``) for the comparisons of benchmark scores. The thresholds of this scale are here,
each stated next to its number in the report, with what the report's tables share: the bootstrap's
resamples (:data:`BOOTSTRAP`) and the 1 % threshold's key (:data:`KEY`).
"""

from __future__ import annotations

import math

from prism_analysis.metrics import DEFAULT_THRESHOLD, threshold_key

from ..intervals import MACRO_WEIGHTS, MATH_WEIGHTS, paired_bootstrap

#: resamples of every bootstrap interval in the report
BOOTSTRAP = 10_000
#: thresholds of the findings at this scale (each stated next to its number in the report)
CKA_KEPT = 0.99
MATH_LIFT = 0.20
BASE_GAIN = 0.05

#: the threshold PRISM reports (1 %), as keyed in summary.json
KEY = threshold_key(DEFAULT_THRESHOLD)


def findings(models, audits, cka, trajs, mc, rs, scores) -> list[dict]:
    """Each PRISM finding: the paper's number, ours, and whether ours supports it at this scale.

    An "A beats B" finding counts as reproduced only when the paired bootstrap 95 % interval of
    A - B (same problems, :func:`~prism_train.intervals.paired_bootstrap`) lies above zero; the
    interval is in the row (``ci95``) and in its text."""
    return [
        *weight_findings(audits, trajs),
        *representation_findings(audits, cka),
        *mid_training_gain_findings(models, scores),
        *rl_gain_findings(models, audits, scores),
        *data_mix_findings(models, scores),
        *comparison_findings(mc, rs),
    ]


def _finding(claim, paper, ours, ok, test=None) -> dict:
    return {"claim": claim, "paper": paper, "ours": ours, "reproduced": bool(ok), **(test or {})}


def _rl_moved(audits) -> tuple[bool, str]:
    """Whether RL after mid-training changed any weight, and the caveat for the findings about RL's
    update when it did not (every batch without reward signal): they are vacuous then."""
    moved = audits["mid_mcs->rl_mid_mcs"]["normalized_l2"] > 0
    still = " (RL changed no weight: no reward signal, so this says nothing)" if not moved else ""
    return moved, still


def weight_findings(audits, trajs) -> list[dict]:
    """From the audits and the RL trajectory: mid-training's update is dense, RL's is sparse, far
    smaller, and front-loaded (the last only when the run has a trajectory)."""
    f = []
    base_mid = audits["base->mid_mcs"]["fraction_changed"][KEY]
    f.append(
        _finding(
            "Mid-training changes most weights (dense update)",
            ">90% changed at 1% (Granite-3.3: 96.5%)",
            f"{100 * base_mid:.1f}% changed (base->mid_mcs; criterion > 90%)",
            base_mid > 0.9,
        )
    )
    mid_rl = audits["mid_mcs->rl_mid_mcs"]["fraction_changed"][KEY]
    l2m, l2r = audits["base->mid_mcs"]["normalized_l2"], audits["mid_mcs->rl_mid_mcs"]["normalized_l2"]
    moved, still = _rl_moved(audits)
    f.append(
        _finding(
            "RL changes a small subset of weights (sparse update)",
            "~5% changed at 1%",
            f"{100 * mid_rl:.1f}% changed (mid_mcs->rl_mid_mcs; criterion <= 20%){still}",
            moved and mid_rl <= 0.2,
        )
    )
    ratio = l2m / l2r if l2r else math.inf
    f.append(
        _finding(
            "RL's update is far smaller than mid-training's",
            "normalized L2 0.175 vs 0.0003 (370-580x)",
            f"{l2m:.4g} vs {l2r:.4g}" + (f" ({ratio:.0f}x; criterion > 10x)" if moved else still),
            moved and ratio > 10,
        )
    )
    t = trajs.get("rl_mid_mcs", {})
    if t.get("t50") is not None and t.get("steps"):
        f.append(
            _finding(
                "RL's weight change is front-loaded",
                "most movement in the first 200-400 of 1000 steps (t50 <= 40%)",
                f"t50 = {t['t50']} of {t['steps']} steps (criterion <= 40%){still}",
                moved and t["t50"] <= 0.4 * t["steps"],
            )
        )
    return f


def representation_findings(audits, cka) -> list[dict]:
    """From the CKA summaries: RL keeps representations, mid-training changes them (each only when
    the run has that pair)."""
    f = []
    moved, still = _rl_moved(audits)
    mr = cka.get("mid_mcs_vs_rl_mid_mcs", {})
    if mr:
        m = min(v["min_cka"] for v in mr.values())
        f.append(
            _finding(
                "RL keeps representations (CKA mid vs RL at every layer)",
                "min CKA 0.9993-0.9999 (> 0.998)",
                f"min CKA {m:.4f} over layers and probe sets (criterion >= {CKA_KEPT} at this scale){still}",
                moved and m >= CKA_KEPT,
            )
        )
    bm = cka.get("base_vs_mid_mcs", {})
    if bm:
        m = min(v["min_cka"] for v in bm.values())
        f.append(
            _finding(
                "Mid-training changes representations",
                "CKA base vs mid falls to 0.41-0.63 (GSM8K, last layers)",
                f"min CKA {m:.4f} (criterion < {CKA_KEPT})",
                m < CKA_KEPT,
            )
        )
    return f


def diff_findings(cka, diff) -> list[dict]:
    """Set the activation-level diff beside CKA (each only when the run has both pairs): RL keeps
    the representations but moves the outputs (how much, and from which depth), and it moves them
    far less than mid-training does, on every benchmark's prompts."""
    f = []
    mr, bm = diff.get("mid_mcs->rl_mid_mcs"), diff.get("base->mid_mcs")
    cka_mr = cka.get("mid_mcs_vs_rl_mid_mcs", {})
    if mr and cka_mr:
        m = min(v["min_cka"] for v in cka_mr.values())
        kl = mr["benchmarks"]
        moved = all(v["mean_kl_ci_low"] > 0 for v in kl.values())
        where = ", ".join(
            f"{b} {v['mean_kl']:.2g} [{v['mean_kl_ci_low']:.2g}, {v['mean_kl_ci_high']:.2g}]" for b, v in kl.items()
        )
        rise = sorted({v["lens_rise_layer"] for v in kl.values() if v["lens_rise_layer"] is not None})
        depth = kl[next(iter(kl))]["n_layers"]
        heads = ", ".join(f"L{h['layer']}.H{h['head']}" for h in mr.get("top_heads", [])[:3])
        f.append(
            _finding(
                "RL keeps representations yet moves the outputs (CKA beside the output KL)",
                "CKA > 0.998 while RL changes behaviour (not measured at the output in PRISM)",
                f"min CKA {m:.4f}; mean KL(P_mid || P_RL) per token, nats [95% CI]: {where}; "
                f"the lens KL rises at layer {'/'.join(map(str, rise)) or '-'} of {depth}"
                + (f"; most changed heads {heads}" if heads else ""),
                m >= CKA_KEPT and moved,
                {"test": "percentile bootstrap over prompts"},
            )
        )
    if mr and bm:
        both = [b for b in mr["benchmarks"] if b in bm["benchmarks"]]
        ratios = {
            b: bm["benchmarks"][b]["mean_kl"] / mr["benchmarks"][b]["mean_kl"]
            if mr["benchmarks"][b]["mean_kl"] > 0
            else math.inf
            for b in both
        }
        apart = all(bm["benchmarks"][b]["mean_kl_ci_low"] > mr["benchmarks"][b]["mean_kl_ci_high"] for b in both)
        f.append(
            _finding(
                "Mid-training moves the outputs far more than RL does",
                "mid-training rewrites representations, RL keeps them (F14)",
                "mean KL base->mid / mid->RL: "
                + ", ".join(f"{b} {r:.3g}x" for b, r in ratios.items())
                + " (criterion: the intervals apart on every benchmark)",
                bool(both) and apart,
                {"test": "percentile bootstrap over prompts"},
            )
        )
    return f


def paired(models, scores, a, b, weights) -> tuple[dict, str, dict]:
    """Model ``a``'s weighted accuracy minus ``b``'s: the paired bootstrap over the same problems
    (``diff``, ``lo``, ``hi``), its text for the report, and the test to record in the finding.
    Without per-problem scores (``scores`` None: an older run), the point estimate alone, with NaN
    bounds, so it never counts as reproduced."""
    if scores is None:
        d = sum(w * (models[a][k] - models[b][k]) for k, w in weights.items())
        r = {"diff": d, "lo": math.nan, "hi": math.nan}
        return r, f"{100 * d:+.1f} points (no per-problem scores: no interval)", {"diff": d}
    r = paired_bootstrap(scores[a], scores[b], weights, resamples=BOOTSTRAP)
    text = f"{100 * r['diff']:+.1f} points [{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}]"
    return r, text, {"diff": r["diff"], "ci95": [r["lo"], r["hi"]], "test": "paired bootstrap"}


def mid_training_gain_findings(models, scores) -> list[dict]:
    """From the benchmark scores, a paired comparison: mid-training (MCS) lifts the math average."""
    r, text, test = paired(models, scores, "mid_mcs", "base", MATH_WEIGHTS)
    return [
        _finding(
            "Mid-training lifts math",
            "+15..40 points",
            f"{text} math average, base -> mid_mcs (criterion: interval above 0 and >= +{100 * MATH_LIFT:.0f})",
            r["lo"] > 0 and r["diff"] >= MATH_LIFT,
            test,
        )
    ]


def rl_gain_findings(models, audits, scores) -> list[dict]:
    """From the benchmark scores, each a paired comparison of macro averages: RL improves every
    mid-trained model, RL after mid-training beats RL on the base, and RL on the base moves its
    weights (from the audit) but gains little."""
    f = []
    for mid in ("mid_math", "mid_mc", "mid_mcs"):
        r, text, test = paired(models, scores, f"rl_{mid}", mid, MACRO_WEIGHTS)
        f.append(
            _finding(
                f"RL improves the mid-trained model ({mid})",
                "macro up after RL from every mid-trained model",
                f"{text} macro, {mid} -> rl_{mid} (criterion: interval above 0)",
                r["lo"] > 0,
                test,
            )
        )
    r, text, test = paired(models, scores, "rl_mid_mcs", "rl_base", MACRO_WEIGHTS)
    f.append(
        _finding(
            "RL after mid-training beats RL on the base model",
            "macro 29-42 vs weak (AIME near zero)",
            f"{text} macro, rl_mid_mcs - rl_base (criterion: interval above 0)",
            r["lo"] > 0,
            test,
        )
    )
    base_l2 = audits["base->rl_base"]["normalized_l2"]
    r, text, test = paired(models, scores, "rl_base", "base", MACRO_WEIGHTS)
    f.append(
        _finding(
            "RL straight on the base model moves it but gains little",
            "near zero on hard math",
            f"{text} macro, base -> rl_base; weights moved (normalized L2 {base_l2:.3g}) "
            f"(criterion: moved and gain <= {100 * BASE_GAIN:.0f} points)"
            + ("" if base_l2 > 0 else " -- RL from the base never updated (no reward signal)"),
            base_l2 > 0 and r["diff"] <= BASE_GAIN,
            test,
        )
    )
    return f


def data_mix_findings(models, scores) -> list[dict]:
    """From the benchmark scores, each a paired comparison: the RL data mix (math vs balanced)
    matters little, science in the mid-training mix (MCS vs MC) shows in science after RL."""
    f = []
    r, text, test = paired(models, scores, "rl_mid_mcs", "rl_mid_mcs_balanced", MACRO_WEIGHTS)
    f.append(
        _finding(
            "Changing the RL data mix matters little",
            "< 2 points",
            f"{text} macro, math - balanced RL mix (criterion: |estimate| < 2 points)",
            abs(r["diff"]) < 0.02,
            test,
        )
    )
    r, text, test = paired(models, scores, "rl_mid_mcs", "rl_mid_mc", {"science": 1.0})
    f.append(
        _finding(
            "Science in the mid-training mix unlocks science after RL",
            "+17..28 GPQA-Diamond",
            f"{text} science, MCS - MC after RL (criterion: interval above 0)",
            r["lo"] > 0,
            test,
        )
    )
    return f


def comparison_findings(mc, rs) -> list[dict]:
    """From the update comparisons: MC and MCS mid-training move weights in related directions
    (``mc``, T13), RL's update looks alike from the base or a mid-trained start (``rs``, F26)."""
    f = []
    cos = float(mc[mc["group"] == "total"]["cosine"].iloc[0])
    f.append(
        _finding(
            "MC and MCS mid-training move weights in related directions",
            "cosine 0.52 (Granite), 0.62 (Nemotron-H)",
            f"cosine {cos:.3f} (criterion 0.3-0.95)",
            0.3 < cos < 0.95,
        )
    )
    tot = rs[rs["group"] == "total"].iloc[0]
    r = tot["normalized_l2_1"] / tot["normalized_l2_2"] if tot["normalized_l2_2"] else math.inf
    base_moved = tot["normalized_l2_1"] > 0
    f.append(
        _finding(
            "RL's update looks alike from base or mid-trained start",
            "total L2 within 20%, fraction changed within 1 pp",
            f"L2 ratio {r:.2f}, fraction changed diff {tot['fraction_changed_diff_pp']:+.1f} pp"
            + ("" if base_moved else " (RL from base got no reward and never updated: nothing to compare)"),
            base_moved and 0.8 <= r <= 1.25 and abs(tot["fraction_changed_diff_pp"]) <= 1.0,
        )
    )
    return f


def geometry_findings(geometry: dict, trajs: dict) -> list[dict]:
    """The claims of "The Path Not Taken" (arXiv 2511.08567) and RL's Razor (arXiv 2509.04259) that
    the update geometry and the live tracking can test (none for a run made before them)."""
    mid, rl = geometry.get("base->mid_mcs"), geometry.get("mid_mcs->rl_mid_mcs")
    out = []
    if mid and rl:
        a_mid, a_rl = mid["mean_principal_angle_deg"], rl["mean_principal_angle_deg"]
        out.append(
            {
                "claim": "RL barely rotates the principal subspaces; SFT / mid-training rotates them far more",
                "paper": "The Path Not Taken: ~5 deg (RL) vs ~50 deg (SFT)",
                "ours": f"mean principal angle {a_rl:.2f} deg (RL) vs {a_mid:.2f} deg (mid); criterion RL < mid / 5",
                "reproduced": bool(a_rl < a_mid / 5),
            }
        )
        p_mid, p_rl = mid["principal_alignment"], rl["principal_alignment"]
        out.append(
            {
                "claim": "RL's update lies off W's principal directions (less of it in the top-k subspace)",
                "paper": "The Path Not Taken: RL avoids principal weights",
                "ours": f"principal alignment {p_rl:.4f} (RL) vs {p_mid:.4f} (mid); criterion RL < mid",
                "reproduced": bool(p_rl < p_mid),
            }
        )
    t = trajs.get("rl_mid_mcs", {})
    if "fraction_visible_bf16" in t:
        out.append(
            {
                "claim": "Part of RL's sparsity is storage precision: fp32 weights change where bf16 ones do not",
                "paper": "RL's Razor: RL's sparsity vanishes in fp32",
                "ours": f"{100 * t['fp32_fraction_changed']:.1f}% of fp32 master weights changed at all, "
                f"{100 * t['fraction_visible_bf16']:.1f}% visible in bf16 (rl_mid_mcs, live tracking)",
                "reproduced": bool(t["fp32_fraction_changed"] > t["fraction_visible_bf16"]),
            }
        )
    return out
