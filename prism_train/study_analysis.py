"""Stage 5 of the study: every PRISM analysis, through the prism_analysis APIs, into RUN/analysis/."""

from __future__ import annotations

import itertools
import json

from prism_analysis.compare import compare_updates
from prism_analysis.figures import plot_landscape
from prism_analysis.interpolate import landscape
from prism_analysis.model_cka import model_cka
from prism_analysis.trajectory import analyse_trajectory, save_trajectory
from prism_analysis.weights import audit

from .data import problems
from .data.general import corpus
from .data.problems import in_split

AUDITS = [
    ("base", "mid_math"),
    ("base", "mid_mc"),
    ("base", "mid_mcs"),
    ("mid_math", "rl_mid_math"),
    ("mid_mc", "rl_mid_mc"),
    ("mid_mcs", "rl_mid_mcs"),
    ("mid_mcs", "rl_mid_mcs_balanced"),
    ("base", "rl_base"),
    ("base", "rl_mid_mcs"),
]
CKA_PAIRS = [("base", "mid_mcs"), ("mid_mcs", "rl_mid_mcs")]


def probe_sets(n: int) -> dict[str, list[str]]:
    """Three probe sets like PRISM's (Wikipedia, C4, GSM8K): pretraining prose, mid-training text,
    RL prompts -- all from the eval split, so no model trained on them."""
    prose = [d for d in corpus() if in_split(d, "eval")][:n]
    mid = []
    gens = [problems(d, "eval", seed=7) for d in ("math", "code_reasoning", "science")]
    for g in itertools.cycle(gens):
        mid.append(next(g).text)
        if len(mid) >= n:
            break
    rl = [p.prompt for p in itertools.islice(problems("math", "eval", seed=11), n)]
    return {"pretraining_text": prose, "midtraining_text": mid, "rl_prompts": rl}


def math_scorer(n: int):
    """Greedy format-gated accuracy on ``n`` held-out easy math problems (the F13 score)."""
    from prism_analysis.activations import load_model

    from .evaluate import benchmark, generate
    from .rewards import reward

    probs = benchmark("math_easy", n)

    def score(path) -> float:
        model, tok = load_model(path, device="cpu", progress=False)
        outs = generate(model, tok, [p.prompt for p in probs])
        return sum(reward("math", o, p.answer) for o, p in zip(outs, probs)) / len(probs)

    return score


def analyse(study) -> None:
    out = study.out / "analysis"
    p, log, prog = study.p, study.log, False
    path = study.model_path
    log("  audits (T12, T22, T23, F11)")
    for a, b in AUDITS:
        audit(path(a), path(b), progress=prog, device="cpu").save(out / "audits" / f"{a}__{b}")
    log("  RL trajectories (F16)")
    trajs = {}
    for run in ("rl_base", "rl_mid_math", "rl_mid_mc", "rl_mid_mcs", "rl_mid_mcs_balanced"):
        trajs[run] = analyse_trajectory(study.out / "models" / run, progress=prog, device="cpu", name=run)
        save_trajectory(out / "trajectories" / run, trajs[run])
    save_trajectory(out / "trajectories" / "f16_mid_vs_base", trajs["rl_mid_mcs"], trajs["rl_base"])
    log("  update comparisons (F12/T13, F26)")
    compare_updates(
        path("base"),
        path("mid_mc"),
        path("base"),
        path("mid_mcs"),
        progress=prog,
        device="cpu",
        labels=("base->MC", "base->MCS"),
    ).save(out / "compare" / "mc_vs_mcs")
    compare_updates(
        path("base"),
        path("rl_base"),
        path("mid_mcs"),
        path("rl_mid_mcs"),
        progress=prog,
        device="cpu",
        labels=("RL from base", "RL from mid"),
    ).save(out / "compare" / "rl_from_base_vs_mid")
    log("  CKA on three probe sets (F14, T14)")
    probes = probe_sets(p.cka_n)
    for a, b in CKA_PAIRS:
        res = model_cka(path(a), path(b), probes, n=p.cka_n, bootstrap=p.bootstrap, progress=prog, device="cpu")
        res.save(out / "cka" / f"{a}__{b}")
    log("  interpolation landscape (F13)")
    g = [i / (p.landscape_grid - 1) for i in range(p.landscape_grid)]
    df = landscape(
        path("base"), path("mid_mcs"), path("rl_mid_mcs"), math_scorer(p.landscape_n), grid_a=g, grid_b=g, progress=prog
    )
    (out / "landscape").mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "landscape" / "landscape.csv", index=False)
    plot_landscape(df, out / "landscape" / "landscape", score_label="math_easy accuracy")
    (out / "probes.json").write_text(json.dumps({k: v[:3] for k, v in probes.items()}, indent=2))
