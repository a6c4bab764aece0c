"""Stage 5 of the study: every PRISM analysis, through the prism_analysis APIs, into OUT/.

:func:`analyse_weights` and :func:`analyse_models` take plain checkpoint paths and RL run
directories, so the same analysis runs on checkpoints the study did not train (any models named as
in :data:`~prism_train.study.design.MODELS`); :func:`analysis_jobs` runs them on the study's run
directories, as two jobs of the study's batch (:mod:`prism_train.schedule`).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd

from prism_analysis.checkpoints.run_manifest import last_checkpoint
from prism_analysis.figures import plot_landscape
from prism_analysis.outputs import write_json
from prism_analysis.representations.model_cka import model_cka
from prism_analysis.representations.model_diff import model_diff
from prism_analysis.tracking.tracker import read_tracking
from prism_analysis.weights.audit import audit
from prism_analysis.weights.compare import compare_updates
from prism_analysis.weights.interpolate import landscape
from prism_analysis.weights.trajectory import analyse_trajectory, save_trajectory

from ..data.general import corpus
from ..data.problem import in_split
from ..data.reasoning import problem_stream
from .design import AUDITS, CKA_PAIRS, DIFF_PAIRS, GEOMETRY, MODELS, RLS, Preset


def probe_sets(n: int) -> dict[str, list[str]]:
    """Three probe sets like PRISM's (Wikipedia, C4, GSM8K): pretraining prose, mid-training text,
    RL prompts -- all from the eval split, so no model trained on them, and each prompt distinct
    (the prose set has as many as the eval split holds, fewer than ``n`` for large ``n``)."""
    prose = [d for d in corpus() if in_split(d, "eval")][:n]
    gens = [problem_stream(d, "eval", seed=7) for d in ("math", "code_reasoning", "science")]
    mid = _distinct((next(g).text for g in itertools.cycle(gens)), n)
    rl = _distinct((p.prompt for p in problem_stream("math", "eval", seed=11)), n)
    return {"pretraining_text": prose, "midtraining_text": mid, "rl_prompts": rl}


def benchmark_prompts(n: int) -> dict[str, list[str]]:
    """The prompts of the first ``n`` problems of each benchmark (held out, as evaluated): the probe
    sets of the activation-level diff, one per benchmark."""
    from ..evaluate import BENCHMARKS, benchmark

    return {b: [p.prompt for p in benchmark(b, n)] for b in BENCHMARKS}


def _distinct(texts, n: int) -> list[str]:
    """The first ``n`` distinct texts of a stream, in order."""
    out: dict[str, None] = {}  # an ordered set
    for t in texts:
        out.setdefault(t)
        if len(out) == n:
            break
    return list(out)


def math_scorer(n: int):
    """Greedy format-gated accuracy on ``n`` held-out easy math problems (the F13 score)."""
    from prism_analysis.representations.model_loader import load_model

    from ..evaluate import benchmark, generate
    from ..rewards import reward

    probs = benchmark("math_easy", n)

    def score(path) -> float:
        model, tok = load_model(path, device="cpu", dtype="float32", progress=False)
        outs = generate(model, tok, [p.prompt for p in probs])
        return sum(reward("math", o, p.answer) for o, p in zip(outs, probs)) / len(probs)

    return score


def _mkdir(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


def reward_table(run_dir) -> pd.DataFrame:
    """The per-step training reward of an RL run (from its manifest's log): step, reward (mean
    format-gated reward of the step's samples), kl (k3 estimate), skipped (no signal, no update)."""
    from prism_analysis.checkpoints.run_manifest import read_manifest

    log = (read_manifest(Path(run_dir)) or {}).get("log", [])
    cols = ["step", "reward", "kl", "skipped"]
    return pd.DataFrame([{c: e.get(c) for c in cols} for e in log], columns=cols)


def analysis_jobs(runs, out, preset: Preset, after: tuple[str, ...] = ()) -> list:
    """The study's analyses into ``out`` as two jobs for :func:`prism_train.schedule.run_jobs`: the
    weight analyses (audits, trajectories, comparisons) and the model analyses (CKA, landscape).

    ``runs``: the directory holding one run directory per name of ``MODELS`` (each model is its
    run's last saved step, looked up when the job starts); ``after``: the jobs that train them.
    """
    from ..schedule import Job

    kw = {"runs": str(runs), "out": str(out)}
    return [
        Job("weights", _weights_of_runs, kw, after),
        Job("models", _models_of_runs, {**kw, "preset": preset}, after),
    ]


def _last_checkpoints(runs) -> dict:
    return {name: last_checkpoint(Path(runs) / name) for name in MODELS}


def _weights_of_runs(runs, out) -> None:
    analyse_weights(_last_checkpoints(runs), {r: Path(runs) / r for r in RLS}, out)


def _models_of_runs(runs, out, preset: Preset) -> None:
    analyse_models(_last_checkpoints(runs), out, preset)


def analyse_weights(models: dict, rl_runs: dict, out, log=print) -> None:
    """Audits (T12, T22, T23, F11), RL trajectories (F16) and reward tables, update comparisons
    (F12/T13, F26): everything computed from the weights alone."""
    out, prog, m = Path(out), False, models
    log("  audits (T12, T22, T23, F11)")
    for a, b in AUDITS:
        units = ("heads", "neurons") if (a, b) in DIFF_PAIRS else ()  # which heads and neurons moved
        audit(models[a], models[b], progress=prog, device="cpu", units=units).save(out / "audits" / f"{a}__{b}")
    log("  RL trajectories (F16) and reward curves")
    trajs = {}
    for run, run_dir in rl_runs.items():
        reward_table(run_dir).to_csv(_mkdir(out / "rewards") / f"{run}.csv", index=False)
        tracked = Path(run_dir) / "tracking"
        if (tracked / "tracking.json").is_file():  # tracked live at every step (fp32 master weights)
            trajs[run] = read_tracking(tracked, name=run)
        else:  # from the saved checkpoints
            trajs[run] = analyse_trajectory(run_dir, progress=prog, device="cpu", name=run)
        save_trajectory(out / "trajectories" / run, trajs[run])
    save_trajectory(out / "trajectories" / "f16_mid_vs_base", trajs["rl_mid_mcs"], trajs["rl_base"])
    log("  update geometry (principal angles, effective rank, alignment)")
    for a, b in GEOMETRY:
        audit(models[a], models[b], progress=prog, device="cpu", spectral=True).save(out / "geometry" / f"{a}__{b}")
    log("  update comparisons (F12/T13, F26)")
    compare_updates(
        m["base"], m["mid_mc"], m["base"], m["mid_mcs"], progress=prog, device="cpu", labels=("base->MC", "base->MCS")
    ).save(out / "compare" / "mc_vs_mcs")
    compare_updates(
        m["base"],
        m["rl_base"],
        m["mid_mcs"],
        m["rl_mid_mcs"],
        progress=prog,
        device="cpu",
        labels=("RL from base", "RL from mid"),
    ).save(out / "compare" / "rl_from_base_vs_mid")


def analyse_models(models: dict, out, preset: Preset, log=print) -> None:
    """CKA on three probe sets (F14, T14) and the interpolation landscape (F13): the analyses that
    run the models."""
    out, p, prog, m = Path(out), preset, False, models
    log("  CKA on three probe sets (F14, T14)")
    probes = probe_sets(p.cka_n)
    for a, b in CKA_PAIRS:
        res = model_cka(
            models[a], models[b], probes, n=p.cka_n, bootstrap=p.bootstrap, progress=prog, device="cpu", dtype="float32"
        )
        res.save(out / "cka" / f"{a}__{b}")
    log("  activation-level diff on each benchmark's prompts (output KL, logit lens, difference lens)")
    bench = benchmark_prompts(p.diff_n)
    for a, b in DIFF_PAIRS:
        res = model_diff(
            models[a], models[b], bench, n=p.diff_n, bootstrap=1000, progress=prog, device="cpu", dtype="float32"
        )
        res.save(out / "diff" / f"{a}__{b}", figures=False)
    log("  interpolation landscape (F13)")
    g = [i / (p.landscape_grid - 1) for i in range(p.landscape_grid)]
    df = landscape(
        m["base"], m["mid_mcs"], m["rl_mid_mcs"], math_scorer(p.landscape_n), grid_a=g, grid_b=g, progress=prog
    )
    (out / "landscape").mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "landscape" / "landscape.csv", index=False)
    plot_landscape(df, out / "landscape" / "landscape", score_label="math_easy accuracy")
    write_json(out / "probes.json", {k: v[:3] for k, v in probes.items()})
