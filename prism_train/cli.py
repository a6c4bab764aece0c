"""``prism train``, ``prism eval`` (and ``prism rl``): the training half of the one ``prism`` command."""

from __future__ import annotations

import argparse
import textwrap


def _steps_list(text: str) -> list[int]:
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of steps: {text!r}") from None


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="pre-train or mid-train a model on a data mix, saving a checkpoint trajectory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Packed next-token training (AdamW, betas 0.9/0.95, weight decay 0.1, warmup + cosine,
            gradient clipping) through accelerate. Every saved step is a complete Hugging Face
            checkpoint (OUT/step_NNNNNN/), listed in OUT/trajectory.json. Rerunning the same command
            after an interruption (even kill -9) resumes from the last complete step; on the CPU the
            result equals an uninterrupted run bit for bit."""),
        epilog=textwrap.dedent("""\
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
              accelerate launch --config_file configs/fsdp.yaml -m prism_analysis.cli train ...   # GPUs"""),
    )
    p.add_argument("--phase", choices=["pretrain", "mid"], default="pretrain")
    p.add_argument("--mix", default="pretrain", help="preset name or mix file (default: pretrain)")
    p.add_argument(
        "--init",
        default="llama",
        help="model family for a fresh model (llama, granite, mistral, nemotron_h) or a checkpoint path",
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument(
        "--save-steps", type=_steps_list, default=[], metavar="LIST", help="extra steps to save, e.g. 1,2,5,10"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--save-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="dtype of saved weights (training keeps fp32 master weights; default float32)",
    )
    p.add_argument("--force", action="store_true", help="start over in a directory that holds another run")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_train)


def _run_train(args) -> None:
    from .lm import TrainConfig, train

    cfg = TrainConfig(
        phase=args.phase,
        mix=args.mix,
        init=args.init,
        steps=args.steps,
        save_every=args.save_every,
        save_steps=args.save_steps,
        lr=args.lr,
        warmup=args.warmup,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        seed=args.seed,
        save_dtype=args.save_dtype,
    )
    m = train(cfg, args.out, force=args.force, progress=not args.quiet)
    last = m["steps"][-1]
    print(
        f"{args.phase}: {last['step']} steps, {last['tokens']:,} tokens, loss {last['loss']:.4f}, "
        f"{last['time']:.0f}s -> {args.out}/{last['path']}"
    )


def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="accuracy on math/code/science benchmarks and general perplexity",
        description="Greedy accuracy (format-gated, as the RL reward) on held-out benchmarks "
        "math_easy, math_hard, code, science; PRISM's macro average "
        "mean(math avg, code, science); perplexity on held-out general prose. "
        "Deterministic for a given seed. Example: prism eval runs/mid/step_001000 --out ev/",
    )
    p.add_argument("checkpoint")
    p.add_argument("--out", help="directory for eval.json and eval.csv")
    p.add_argument("--n", type=int, default=50, help="problems per benchmark (default 50)")
    p.add_argument("--pass-k", default=None, metavar="K,N", help="also pass@K from N samples, e.g. 4,8")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--device", default=None)
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> None:
    import pandas as pd

    from prism_analysis.activations import load_model
    from prism_analysis.errors import PrismError
    from prism_analysis.outputs import atomic_output_dir, write_json

    from .evaluate import evaluate

    pass_k = None
    if args.pass_k:
        try:
            k, n = (int(x) for x in args.pass_k.split(","))
        except ValueError:
            raise PrismError(f"--pass-k wants K,N (e.g. 4,8), not {args.pass_k!r}") from None
        pass_k = (k, n)
    model, tok = load_model(args.checkpoint, device=args.device, progress=False)
    res = evaluate(model, tok, n=args.n, seed=args.seed, pass_k=pass_k)
    if args.out:
        with atomic_output_dir(args.out) as tmp:
            write_json(tmp / "eval.json", {"checkpoint": args.checkpoint, **res})
            pd.DataFrame([{"metric": k, "value": v} for k, v in res.items()]).to_csv(tmp / "eval.csv", index=False)
    for k, v in res.items():
        print(f"{k:<22}{v:.4f}")


def add_rl(sub) -> None:
    p = sub.add_parser(
        "rl",
        help="GRPO with verifiable rewards from a checkpoint, saving an RL trajectory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            GRPO: per prompt sample G completions, score them (format-gated 0/1 rewards: math exact,
            code exact output, science within 1%), group-relative advantages, token-level clipped
            policy loss, optional KL to the starting model, AdamW with linear decay. Saves the same
            layout as prism train (phase "rl", parent = --init); per-step reward, accuracy, response
            length, KL and lr, and benchmark evaluations every --eval-every steps, land in
            OUT/trajectory.json. A batch whose groups all score alike carries no signal and leaves
            the weights untouched. Resumable like prism train."""),
        epilog=textwrap.dedent("""\
            examples:
              prism rl --init runs/mid_mcs/step_001000 --mix math --out runs/rl_mid_mcs --steps 60
              prism rl --init runs/base/step_000300 --mix balanced --out runs/rl_base --kl-beta 0.05
              prism trajectory runs/rl_mid_mcs --compare runs/rl_base --out traj/   # F16

            checkpoints from other RL stacks (TRL, open-instruct, verl merged to HF) feed the analysis
            as they are: prism trajectory on their checkpoint-N directories, or a trajectory.json
            written by hand: {"parent": "<start>", "steps": [{"step": 0, "path": "..."}, ...]}."""),
    )
    p.add_argument("--init", required=True, help="checkpoint to start from (base or mid-trained)")
    p.add_argument("--mix", default="math", help="math, balanced, or a mix file of reasoning domains")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--save-steps", type=_steps_list, default=[], metavar="LIST")
    p.add_argument("--group-size", type=int, default=8, help="completions per prompt, G (>= 2)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--kl-beta", type=float, default=0.0, help="KL penalty to the start (0: off, no reference model)")
    p.add_argument("--no-std-scaling", action="store_true", help="Dr. GRPO advantages (no division by group std)")
    p.add_argument("--ppo-epochs", type=int, default=1, help="optimizer steps per batch (ratio clipping applies)")
    p.add_argument(
        "--difficulty-filter",
        action="store_true",
        help="keep prompts the starting model solves sometimes but not always",
    )
    p.add_argument("--eval-every", type=int, default=0, help="benchmark evaluation every M steps (0: never)")
    p.add_argument("--eval-n", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_rl)


def _run_rl(args) -> None:
    from .rl import RLConfig, rl_train

    cfg = RLConfig(
        init=args.init,
        mix=args.mix,
        steps=args.steps,
        save_every=args.save_every,
        save_steps=args.save_steps,
        group_size=args.group_size,
        prompts_per_step=args.prompts,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        lr=args.lr,
        kl_beta=args.kl_beta,
        scale_std=not args.no_std_scaling,
        ppo_epochs=args.ppo_epochs,
        difficulty_filter=args.difficulty_filter,
        eval_every=args.eval_every,
        eval_n=args.eval_n,
        seed=args.seed,
    )
    m = rl_train(cfg, args.out, force=args.force, progress=not args.quiet)
    logs = m["log"]
    if logs:
        first, last = logs[: max(1, len(logs) // 5)], logs[-max(1, len(logs) // 5) :]
        mean = lambda xs: sum(x["reward"] for x in xs) / len(xs)  # noqa: E731
        print(
            f"rl: {len(logs)} steps, mean reward {mean(first):.3f} (first fifth) -> {mean(last):.3f} (last fifth), "
            f"{sum(x['skipped'] for x in logs)} steps without signal"
        )
    timing = m["steps"][-1].get("timing", {})
    if timing:
        tot = sum(timing.values()) or 1
        print(f"time: generation {100 * timing['generate'] / tot:.0f}%, training {100 * timing['train'] / tot:.0f}%")


def add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="the miniature PRISM study end to end: train, RL, evaluate, analyse, report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Pretrain a base model; mid-train it on math, math+code (MC) and math+code+science (MCS);
            run GRPO from the base and from each mid-trained model (math RL mix; MCS also balanced);
            evaluate everything; then audit, trace, compare, CKA and interpolate as the paper does,
            and write RUN/figures, RUN/tables, RUN/report.md and RUN/summary.json.
            Stages are cached and resumable: rerun the same command after an interruption."""),
        epilog=textwrap.dedent("""\
            presets (2-core CPU): smoke  < 90 s, a check that everything runs
                                  tiny   the default, ~19 minutes
                                  small  bigger models (~6.5M parameters) and more steps, for a GPU:
                                         an estimated 30-60 minutes on one H100, mostly RL generation
                                         (not yet measured: no GPU has been lent to this project)
            stages: pretrain, mid, rl, eval, analyse, report (--force STAGE reruns one; --force all)

            examples:
              prism reproduce --out runs/tiny
              prism reproduce --preset smoke --out runs/smoke --family nemotron_h
              prism reproduce --out runs/tiny --force report     # redraw figures and tables only"""),
    )
    p.add_argument("--preset", default="tiny", help="smoke, tiny (default) or small")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--family", default=None, help="llama (default), granite, mistral or nemotron_h")
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="rerun a stage (repeatable), or all")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_reproduce)


def _run_reproduce(args) -> None:
    from .study import reproduce

    summary = reproduce(args.out, args.preset, args.family, args.force, progress=not args.quiet)
    for f in summary["findings"]:
        print(f"[{'yes' if f['reproduced'] else ' no'}] {f['claim']}: {f['ours']} (paper: {f['paper']})")


def add_figures(sub) -> None:
    p = sub.add_parser(
        "figures",
        help="redraw a study's figures and tables from its saved tables (no retraining)",
        description="Copy the saved tables of a study run (no checkpoints) into INTO/run, redraw "
        "every figure and table from them, and write INTO/*.png, INTO/*.md (tables and "
        "report.md) and INTO/summary.json. Without a run directory, redraws from "
        "INTO/run. Example: prism figures --run runs/tiny --into figures",
    )
    p.add_argument("--run", default="runs/tiny", help="study run directory (default runs/tiny)")
    p.add_argument("--into", default="figures", help="destination (default figures/)")
    p.set_defaults(func=_run_figures)


def _run_figures(args) -> None:
    from .study_report import export

    summary = export(args.run, args.into)
    n = sum(f["reproduced"] for f in summary["findings"])
    print(f"redrew figures into {args.into}/ ({n} of {len(summary['findings'])} findings reproduced)")


ADDERS = [add_train, add_eval, add_rl, add_reproduce, add_figures]
