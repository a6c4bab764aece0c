"""The training commands of ``prism``: train, rl, eval, reproduce, figures.

:data:`COMMANDS` is this package's command table (joined with the analysis commands by
:mod:`prism_cli`). The options of ``train`` and ``rl`` are built from the fields of
:class:`~prism_train.config.TrainConfig` and :class:`~prism_train.config.RLConfig`, so each option
(its default, help and valid range) is defined once. This module imports no heavy library.
"""

from __future__ import annotations

from prism_analysis.cli.parser import add_checkpoint_options, add_command, add_config_option
from prism_analysis.distributed import is_root
from prism_analysis.options import add_options, from_args, nonempty, number

from .config import RLConfig, TrainConfig


def _run_options(p) -> None:
    p.add_argument("--out", type=nonempty, required=True, help="run directory (created; resumed when rerun)")
    p.add_argument(
        "--force",
        action="store_true",
        help="in a run directory of another configuration: delete that run's checkpoints and start over",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# -- train --------------------------------------------------------------------------------------------
def add_train(sub) -> None:
    p = add_command(
        sub,
        "train",
        "pre-train or mid-train a model on a data mix, saving a checkpoint trajectory",
        """\
        Packed next-token training (AdamW, betas 0.9/0.95, weight decay 0.1, warmup + cosine,
        gradient clipping) through accelerate. Every saved step is a complete Hugging Face
        checkpoint (OUT/step_NNNNNN/), listed in OUT/trajectory.json. Rerunning the same command
        after an interruption (even kill -9) resumes from the last complete step; on the CPU the
        result equals an uninterrupted run bit for bit. One process at a time writes a run
        directory (a second one is refused, naming the first).""",
        """\
        mixes: pretrain, math, math_code (mc), math_code_science (mcs), or a YAML/JSON file:
          domains: {general: 0.3, math: 0.4, science: 0.3}
          sources: [{path: my_corpus.jsonl, weight: 0.5, field: text}]
        domains: general, code, math, code_reasoning, science
        weights are shares of the text (characters), like a token mix: long documents are drawn
        less often than short problems. Documents are packed first-fit, never cut unless longer
        than --seq-len.

        examples:
          prism train --phase pretrain --mix pretrain --init llama --out runs/base --steps 300
          prism train --phase mid --mix mcs --init runs/base/step_000300 --out runs/mid_mcs --steps 1000
          prism train ... --nproc 2                                  # data-parallel, 2 processes
          accelerate launch --config_file configs/fsdp.yaml -m prism_cli train ...   # GPUs""",
    )
    add_options(p, TrainConfig)
    _run_options(p)
    p.set_defaults(func=_run_train)


def _run_train(args) -> None:
    from .lm import train

    cfg = from_args(TrainConfig, args)
    m = train(cfg, args.out, force=args.force, progress=not args.quiet and is_root())
    if not is_root():  # data-parallel: rank 0 alone reports
        return
    last = m["steps"][-1]
    print(
        f"{cfg.phase}: {last['step']} steps, {last['tokens']:,} tokens, loss {last['loss']:.4f}, "
        f"{last['time']:.0f}s -> {args.out}/{last['path']}"
    )


# -- eval ---------------------------------------------------------------------------------------------
def add_eval(sub) -> None:
    p = add_command(
        sub,
        "eval",
        "accuracy on math/code/science benchmarks and general perplexity",
        """\
        Greedy accuracy (format-gated, as the RL reward) on held-out benchmarks math_easy,
        math_hard, code, science; PRISM's macro average mean(math avg, code, science); perplexity
        on held-out general prose. Deterministic for a given seed.""",
        """\
        examples:
          prism eval runs/mid/step_001000 --out ev/mid
          prism eval runs/rl/step_000060 --n 200 --pass-k 4,8""",
    )
    p.add_argument("checkpoint", type=nonempty, help="the checkpoint to evaluate")
    p.add_argument("--out", type=nonempty, help="directory for eval.json and eval.csv (written atomically)")
    p.add_argument("--n", type=number(int, low=1), default=50, help="problems per benchmark (default 50)")
    p.add_argument("--pass-k", default=None, metavar="K,N", help="also pass@K from N samples (1 <= K <= N), e.g. 4,8")
    p.add_argument("--seed", type=int, default=2026, help="seed of the benchmark problems (default 2026)")
    add_checkpoint_options(p)
    add_config_option(p)
    p.set_defaults(func=_run_eval, one_process=True)


def _run_eval(args) -> None:
    import pandas as pd

    from prism_analysis.errors import PrismError
    from prism_analysis.outputs import atomic_output_dir, check_destination
    from prism_analysis.representations.model_loader import load_model

    from .evaluate import evaluate

    pass_k = None
    if args.pass_k:
        try:
            k, n = (int(x) for x in args.pass_k.split(","))
        except ValueError:
            raise PrismError(f"--pass-k wants K,N (e.g. 4,8), not {args.pass_k!r}") from None
        if not 1 <= k <= n:
            raise PrismError(f"--pass-k {args.pass_k}: K must be between 1 and the number of samples N")
        pass_k = (k, n)
    if args.out:
        check_destination(args.out, "eval", [args.checkpoint])
    model, tok = load_model(
        args.checkpoint, device=args.device, allow_pickle=args.allow_pickle, progress=False, config=args.config
    )
    from .intervals import wilson

    res = evaluate(model, tok, n=args.n, seed=args.seed, pass_k=pass_k)
    scores, distinct = res.pop("scores"), res.pop("distinct")
    print(
        f"{args.n} held-out draws per benchmark; distinct problems: "
        + ", ".join(f"{b} {d}" for b, d in distinct.items())
    )
    for k, v in res.items():
        ci = ""
        if k in scores:
            lo, hi = wilson(sum(scores[k]), len(scores[k]))
            ci = f"  95% Wilson [{lo:.4f}, {hi:.4f}]"
        print(f"{k:<22}{v:.4f}{ci}")
    if args.out:
        with atomic_output_dir(args.out, "eval", [args.checkpoint]) as tmp:
            from prism_analysis.outputs import write_json

            write_json(
                tmp / "eval.json", {"checkpoint": args.checkpoint, **res, "distinct": distinct, "scores": scores}
            )
            pd.DataFrame([{"metric": k, "value": v} for k, v in res.items()]).to_csv(tmp / "eval.csv", index=False)


# -- rl -----------------------------------------------------------------------------------------------
def add_rl(sub) -> None:
    p = add_command(
        sub,
        "rl",
        "GRPO with verifiable rewards from a checkpoint, saving an RL trajectory",
        """\
        GRPO: per prompt sample G completions, score them (format-gated 0/1 rewards: math exact,
        code exact output, science within 1%), group-relative advantages, token-level clipped
        policy loss, optional KL to the starting model, AdamW with linear decay. Saves the same
        layout as prism train (phase "rl", parent = --init); per-step reward, accuracy, response
        length, KL and lr, and benchmark evaluations every --eval-every steps, land in
        OUT/trajectory.json. A batch whose groups all score alike carries no signal and leaves
        the weights untouched. Resumable like prism train.""",
        """\
        examples:
          prism rl --init runs/mid_mcs/step_001000 --mix math --out runs/rl_mid_mcs --steps 60
          prism rl --init runs/base/step_000300 --mix balanced --out runs/rl_base --kl-beta 0.05
          prism trajectory runs/rl_mid_mcs --compare runs/rl_base --out traj/   # F16

        checkpoints from other RL stacks (TRL, open-instruct, verl merged to HF) feed the analysis
        as they are: prism trajectory on their checkpoint-N directories, or a trajectory.json
        written by hand: {"parent": "<start>", "steps": [{"step": 0, "path": "..."}, ...]}.""",
    )
    add_options(p, RLConfig)
    _run_options(p)
    p.set_defaults(func=_run_rl)


def _run_rl(args) -> None:
    from .rl import rl_train

    m = rl_train(from_args(RLConfig, args), args.out, force=args.force, progress=not args.quiet and is_root())
    if not is_root():  # data-parallel: rank 0 alone reports
        return
    logs = m["log"]
    if logs:
        fifth = max(1, len(logs) // 5)
        first, last = logs[:fifth], logs[-fifth:]
        r_first = sum(x["reward"] for x in first) / len(first)
        r_last = sum(x["reward"] for x in last) / len(last)
        print(
            f"rl: {len(logs)} steps, mean reward {r_first:.3f} (first fifth) -> {r_last:.3f} (last fifth), "
            f"{sum(x['skipped'] for x in logs)} steps without signal"
        )
    timing = m["steps"][-1].get("timing", {})
    if timing:
        tot = sum(timing.values()) or 1
        print(f"time: generation {100 * timing['generate'] / tot:.0f}%, training {100 * timing['train'] / tot:.0f}%")


# -- reproduce ----------------------------------------------------------------------------------------
def add_reproduce(sub) -> None:
    p = add_command(
        sub,
        "reproduce",
        "the miniature PRISM study end to end: train, RL, evaluate, analyse, report",
        """\
        Pretrain a base model; mid-train it on math, math+code (MC) and math+code+science (MCS);
        run GRPO from the base and from each mid-trained model (math RL mix; MCS also balanced);
        evaluate everything; then audit, trace, compare, CKA and interpolate as the paper does,
        and write RUN/figures, RUN/tables, RUN/report.md and RUN/summary.json.
        Stages are cached and resumable: rerun the same command after an interruption.""",
        """\
        presets (2-core CPU): smoke  < 90 s, a check that everything runs
                              tiny   the default, 12-16 minutes (figures/report.md)
                              small  bigger models (~6.5M parameters) and more steps, for a GPU:
                                     an estimated 30-60 minutes on one H100, mostly RL generation
                                     (not yet measured: no GPU has been lent to this project)
        stages: pretrain, mid, rl, eval, analyse, report (--force STAGE reruns one; --force all)

        examples:
          prism reproduce --out runs/tiny
          prism reproduce --preset smoke --out runs/smoke --family nemotron_h
          prism reproduce --out runs/tiny --force report     # redraw figures and tables only""",
    )
    p.add_argument("--preset", default="tiny", help="smoke, tiny (default) or small")
    p.add_argument("--out", type=nonempty, required=True, help="run directory")
    p.add_argument("--family", default=None, help="llama (default), granite, mistral or nemotron_h")
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="rerun a stage (repeatable), or all")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_reproduce, one_process=True)


def _run_reproduce(args) -> None:
    from .study.run import reproduce

    summary = reproduce(args.out, args.preset, args.family, args.force, progress=not args.quiet)
    for f in summary["findings"]:
        print(f"[{'yes' if f['reproduced'] else ' no'}] {f['claim']}: {f['ours']} (paper: {f['paper']})")


# -- figures ------------------------------------------------------------------------------------------
def add_figures(sub) -> None:
    p = add_command(
        sub,
        "figures",
        "redraw a study's figures and tables from its saved tables (no retraining)",
        """\
        Copy the saved tables of a study run (no checkpoints) into INTO/run, redraw every figure
        and table from them, and write INTO/*.png, INTO/*.md (tables and report.md) and
        INTO/summary.json. Without a run directory, redraws from INTO/run. Only files a previous
        export wrote are replaced.""",
        """\
        examples:
          prism figures --run runs/tiny --into figures
          prism figures --into figures        # redraw from the committed figures/run""",
    )
    p.add_argument("--run", type=nonempty, default="runs/tiny", help="study run directory (default runs/tiny)")
    p.add_argument("--into", type=nonempty, default="figures", help="destination (default figures/)")
    p.set_defaults(func=_run_figures, one_process=True)


def _run_figures(args) -> None:
    from .study.export import export

    summary = export(args.run, args.into)
    n = sum(f["reproduced"] for f in summary["findings"])
    print(f"redrew figures into {args.into}/ ({n} of {len(summary['findings'])} findings reproduced)")


#: This package's command table.
COMMANDS = [add_train, add_eval, add_rl, add_reproduce, add_figures]
