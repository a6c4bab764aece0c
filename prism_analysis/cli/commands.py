"""The analysis commands of ``prism``: audit, cka, diff, trajectory, compare, interpolate.

Each command is a pair: ``_add_<name>(sub)`` declares its options and help, ``_run_<name>(args)``
calls the Python API with them. :data:`COMMANDS` is this package's command table; the ``prism``
entry point (:mod:`prism_cli`) joins it with the training commands, and ``python -m
prism_analysis.cli`` runs the analysis commands alone. The parser framework (one-line errors, exit
codes, ``--nproc``) is :mod:`prism_analysis.cli.parser`.
"""

from __future__ import annotations

import sys

from ..distributed import is_root
from ..errors import PrismError
from ..options import add_options, from_args, nonempty, number
from .api_options import AuditOptions, CkaOptions, CompareOptions, DiffOptions, TrajectoryOptions
from .parser import (
    WEIGHTS_DEVICE_HELP,
    add_checkpoint_options,
    add_command,
    add_config_option,
    warn_unused_config,
)
from .references import hub_trajectory


# -- audit ------------------------------------------------------------------------------------------
def _add_audit(sub) -> None:
    p = add_command(
        sub,
        "audit",
        "update size and sparsity between two checkpoints (PRISM T12/T22/T23, F11)",
        """\
        Compare checkpoint B (later) against checkpoint A (earlier), tensor by tensor, streaming
        one pair at a time (memory stays at a few tensors, whatever the model size).

        Reports, per tensor, layer, component and for the whole model:
          normalized L2      ||W_B - W_A||_F / ||W_A||_F  (groups: over the concatenation)
          fraction changed   share of elements with |w_B - w_A| > tau * |w_A|, for every tau
          fraction equal     share of elements bitwise equal in the stored dtype
        A and B may be model directories (single or sharded safetensors), .safetensors files,
        sharded training checkpoints saved with torch.distributed.checkpoint (FSDP, HF Trainer
        checkpoint-N/pytorch_model_fsdp_0/, torchtitan, Megatron torch_dist), read in place, or
        Hub references (org/name[@revision][:subfolder]); BASE+ADAPTER is BASE with a PEFT LoRA
        adapter merged (audit BASE against it).""",
        """\
        examples:
          prism audit runs/base runs/mid --out audits/base_to_mid
          prism audit mid/model.safetensors rl/model.safetensors --thresholds 0.1%,1%,10%
          prism audit base/ mid/ --out out/ --device cuda     # statistics on the GPU
          prism audit base/ base/+lora/ --out audits/lora     # the update a LoRA adapter makes
          prism audit base/ run/checkpoint-500 --config base/config.json   # FSDP sharded checkpoint
          prism audit mid/ rl/ --spectral --out audits/geometry   # + ranks, principal angles, bf16 visibility
          prism audit mid/ rl/ --units heads,neurons --out audits/units   # which heads and neurons moved

        writes OUT/summary.json, OUT/tensors.csv, OUT/layers.csv, OUT/components.csv (OUT/experts.csv
        for a MoE model) and OUT/update_by_layer_and_component.{png,pdf} (F11); with --spectral six more
        columns in every table and OUT/geometry_by_layer_and_component.{png,pdf}. OUT appears only when
        complete.""",
    )
    p.add_argument("a", type=nonempty, help="earlier checkpoint (e.g. base)")
    p.add_argument("b", type=nonempty, help="later checkpoint (e.g. mid-trained)")
    p.add_argument("--out", type=nonempty, help="output directory (written atomically); omit to only print")
    p.add_argument("--no-figure", action="store_true", help="skip the F11 figure")
    p.add_argument("--all-neurons", action="store_true", help="neurons.csv lists every neuron (default: the top 100)")
    add_options(p, AuditOptions)
    add_config_option(p)
    add_checkpoint_options(p, device=f"{WEIGHTS_DEVICE_HELP}; with --spectral, cuda if any")
    p.set_defaults(func=_run_audit)


def _run_audit(args) -> None:
    from ..figure_process import started
    from ..outputs import check_destination

    if args.out:
        check_destination(args.out, "audit", [args.a, args.b, args.config])
    warn_unused_config(args.config, [args.a, args.b])
    # matplotlib is imported by a helper process beside torch's import and the audit (figure_process)
    with started(enabled=bool(args.out) and not args.no_figure and is_root()) as drawer:
        from ..weights.audit import audit

        result = audit(
            args.a,
            args.b,
            **vars(from_args(AuditOptions, args)),
            device=args.device,
            progress=not args.quiet and is_root(),
            allow_pickle=args.allow_pickle,
            config=args.config,
            neurons_top=None if args.all_neurons else 100,
        )
        if not is_root():  # under a launcher, rank 0 alone prints and writes
            return
        print(result.format(), flush=True)
        if args.out:
            result.save(args.out, figure=not args.no_figure, drawer=drawer)
    if args.out:
        figure = "" if args.no_figure else ", update_by_layer_and_component.png/.pdf"
        if args.spectral and not args.no_figure:
            figure += ", geometry_by_layer_and_component.png/.pdf"
        experts = ", experts.csv" if len(result.experts) else ""
        experts += ", heads.csv" if len(result.heads) else ""
        experts += ", neurons.csv" if len(result.neurons) else ""
        if len(result.heads) and not args.no_figure:
            figure += ", heads_by_layer.png/.pdf"
        print(f"\nwrote {args.out}/summary.json, tensors.csv, layers.csv, components.csv{experts}{figure}")


# -- cka ----------------------------------------------------------------------------------------------
def _add_cka(sub) -> None:
    p = add_command(
        sub,
        "cka",
        "layer-by-layer CKA between two checkpoints on probe prompts (PRISM F14/T14)",
        """\
        Run both checkpoints on the prompts of each probe file (one prompt per forward pass),
        pool every layer's hidden states (embedding output, i.e. the input of the first block,
        and every block's output), and compute the linear CKA of layer l of A with layer l of B
        over the prompts:

          CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),  X, Y column-centred   (Eq. 4)

        The estimate is CKA on all n prompts, with its 95% delete-one jackknife interval
        (cka_ci_low, cka_ci_high). PRISM's protocol (CKA on random subsets of half the prompts,
        20 times) is in the resample_* columns: it estimates CKA on n/2 prompts, which is biased
        upward, so its interval can exclude the estimate. The number PRISM reports (T14) is the
        minimum over layers.""",
        """\
        examples:
          prism cka runs/mid runs/rl --probe wiki.txt --probe gsm8k.jsonl --out cka/mid_vs_rl
          prism cka base/ mid/ --probe c4.txt --pool tokens          # every token a row, streamed
          prism cka base/ other/ --probe p.txt --all-pairs           # + L x L heatmap
          prism cka mid/ rl/ --probe p.txt --measure cka,mutual_knn,cknna,procrustes,svcca,rsa --out cka/suite

        probe files: .txt (one prompt per line) or .jsonl (field "text").
        writes OUT/cka.csv (probe, layer, cka, cka_ci_low, cka_ci_high, resample_mean, ...),
        OUT/summary.json ({probe: {min_cka, min_cka_ci_low, min_cka_ci_high, argmin_layer, layers}})
        and OUT/cka_by_layer.{png,pdf} (F14); with --measure beyond cka also OUT/similarity.csv and
        OUT/similarity_by_layer.{png,pdf} (each measure, its permutation null, p-value, corrected score).""",
    )
    p.add_argument("a", type=nonempty, help="first checkpoint (e.g. mid-trained)")
    p.add_argument("b", type=nonempty, help="second checkpoint (e.g. after RL)")
    p.add_argument(
        "--probe",
        action="append",
        required=True,
        metavar="FILE",
        help="probe prompts (.txt or .jsonl); repeat for several probe sets",
    )
    p.add_argument("--out", type=nonempty, help="output directory (written atomically); omit to only print")
    add_options(p, CkaOptions)
    add_checkpoint_options(p)
    add_config_option(p)
    p.set_defaults(func=_run_cka)


def _run_cka(args) -> None:
    from pathlib import Path

    from ..outputs import check_destination
    from ..representations.model_cka import model_cka, read_probe

    if args.out:
        check_destination(args.out, "cka", [args.a, args.b, *args.probe])
    probes = {}
    for f in args.probe:
        name = Path(f).stem
        if name in probes:
            raise PrismError("two probe files share this name; rename one", f)
        probes[name] = read_probe(f)
    result = model_cka(
        args.a,
        args.b,
        probes,
        **vars(from_args(CkaOptions, args)),
        device=args.device,
        allow_pickle=args.allow_pickle,
        progress=not args.quiet and is_root(),
        config=args.config,
    )
    if not is_root():  # under a launcher, rank 0 alone prints and writes
        return
    print(result.format(), flush=True)
    if args.out:
        result.save(args.out)
        suite = ", similarity.csv, similarity_by_layer.png/.pdf" if len(result.similarity) else ""
        print(f"\nwrote {args.out}/cka.csv, summary.json, cka_by_layer.png/.pdf{suite}")


# -- diff ---------------------------------------------------------------------------------------------
def _add_diff(sub) -> None:
    p = add_command(
        sub,
        "diff",
        "activation-level diff of two checkpoints on probe prompts: output KL, logit lens, difference lens",
        """\
        Run both checkpoints side by side on the prompts of each probe file, batch by batch (no
        logits are kept beyond one batch; every reduction in float64), and report:

          output divergence   at every probe token: KL(P_A||P_B), KL(P_B||P_A), whether the top-1
                              tokens agree, log P_B(next) - log P_A(next); per probe set the means
                              with a 95% percentile bootstrap interval over prompts
          logit lens          each layer's residual stream through the model's own final norm and
                              lm_head: KL(lens_A||lens_B) and each model's KL(P_output||lens) per layer
          difference lens     mean residual difference B - A per layer (all tokens, first K
                              positions), read through each model's head as
                              head(delta/rms(delta)) - head(0): the tokens it promotes and suppresses

        Layer 0 is the embedding output (the input of the first block), as in prism cka.""",
        """\
        examples:
          prism diff runs/mid runs/rl --probe wiki.txt --probe gsm8k.jsonl --out diff/mid_vs_rl
          prism diff base/ base/+lora/ --probe p.txt --lens-layers none --out diff/lora   # output KL only
          prism diff mid/ rl/ --probe p.txt --nproc 4 --device cuda --dtype bfloat16 --out diff/big

        probe files: .txt (one prompt per line) or .jsonl (field "text").
        writes OUT/summary.json ({probe: {mean_kl, mean_kl_ci_low, mean_kl_ci_high, mean_kl_ba,
        agreement, mean_delta_logprob, ... }}), OUT/positions.csv (every position), OUT/tokens.csv
        (the top positions by KL with context and each model's top tokens), OUT/layers.csv (logit
        lens), OUT/lens.csv (difference lens) and OUT/diff_layers.{png,pdf}, OUT/diff_lens.{png,pdf}.""",
    )
    p.add_argument("a", type=nonempty, help="first checkpoint (e.g. mid-trained)")
    p.add_argument("b", type=nonempty, help="second checkpoint (e.g. after RL)")
    p.add_argument(
        "--probe",
        action="append",
        required=True,
        metavar="FILE",
        help="probe prompts (.txt or .jsonl); repeat for several probe sets",
    )
    p.add_argument("--out", type=nonempty, help="output directory (written atomically); omit to only print")
    p.add_argument("--no-figure", action="store_true", help="skip the figures")
    add_options(p, DiffOptions)
    add_checkpoint_options(p)
    add_config_option(p)
    p.set_defaults(func=_run_diff)


def _run_diff(args) -> None:
    from pathlib import Path

    from ..outputs import check_destination
    from ..representations.model_cka import read_probe
    from ..representations.model_diff import model_diff

    if args.out:
        check_destination(args.out, "diff", [args.a, args.b, *args.probe])
    warn_unused_config(args.config, [args.a, args.b])
    probes = {}
    for f in args.probe:
        name = Path(f).stem
        if name in probes:
            raise PrismError("two probe files share this name; rename one", f)
        probes[name] = read_probe(f)
    result = model_diff(
        args.a,
        args.b,
        probes,
        **vars(from_args(DiffOptions, args)),
        device=args.device,
        allow_pickle=args.allow_pickle,
        progress=not args.quiet and is_root(),
        config=args.config,
    )
    if not is_root():  # under a launcher, rank 0 alone prints and writes
        return
    print(result.format(), flush=True)
    if args.out:
        result.save(args.out, figures=not args.no_figure)
        figures = "" if args.no_figure else ", diff_layers.png/.pdf, diff_lens.png/.pdf"
        print(f"\nwrote {args.out}/summary.json, positions.csv, tokens.csv, layers.csv, lens.csv{figures}")


# -- trajectory -------------------------------------------------------------------------------------
def _add_trajectory(sub) -> None:
    p = add_command(
        sub,
        "trajectory",
        "front-loading over a checkpoint sequence (PRISM F16)",
        """\
        For every checkpoint theta_t of a run, against the first (theta_0) and the last (theta_T),
        per component and for the whole model:
          C(t)                       cumulative normalized L2 ||theta_t - theta_0|| / ||theta_0||
          fraction changed           vs theta_0, at every threshold of the sweep
          cosine_to_final            cosine(theta_t - theta_0, theta_T - theta_0)
          share_of_final_changed     share of the final changed set (at --tau) already changed at t
        and t50 / t80: the first step where C(t) reaches 50% / 80% of C(T).
        Each checkpoint file is read once.""",
        """\
        RUN is a directory with a trajectory.json manifest (written by prism train / prism rl),
        a directory of step directories (step_000020/, checkpoint-20/, global_step20/, ...),
        two or more checkpoints in order (paths or Hub references), or one Hub repository with
        --revisions (its branches or tags) or --subfolders (its step folders). Steps may be
        torch.distributed.checkpoint directories (an HF Trainer FSDP run:
        checkpoint-N/pytorch_model_fsdp_0/); --config gives their config.json when they carry none.

        examples:
          prism trajectory EleutherAI/pythia-160m --revisions 'step*' --evict --out traj/pythia
          prism trajectory EleutherAI/pythia-160m --revisions step0,step1000,step143000
          prism trajectory org/run@main --subfolders 'step-*' --out traj/run
          prism trajectory runs/rl_mid --out traj/rl_mid
          prism trajectory runs/rl_mid --compare runs/rl_base --out traj/f16   # F16 overlay
          prism trajectory ckpt/step_0 ckpt/step_100 ckpt/step_200 --out traj/x

        writes OUT/trajectory.csv (step, component, metric, value), OUT/summary.json and
        OUT/trajectory.{png,pdf} (F16; --compare run dashed).""",
    )
    p.add_argument(
        "run", nargs="+", type=nonempty, help="run directory or manifest, checkpoints in order, or a Hub repository"
    )
    p.add_argument(
        "--revisions",
        metavar="LIST|PATTERN",
        help="with RUN = org/name: the revisions to trace, comma-separated (step0,step1000) or a pattern "
        "('step*'), in step order",
    )
    p.add_argument(
        "--subfolders",
        metavar="LIST|PATTERN",
        help="with RUN = org/name[@revision]: the step folders to trace, comma-separated or a pattern ('step-*')",
    )
    p.add_argument(
        "--evict",
        action="store_true",
        help="fetch one Hub checkpoint at a time and drop it from the cache after use unless it is the first "
        "or last or was cached before (peak disk: 3 checkpoints)",
    )
    p.add_argument("--compare", type=nonempty, default=None, metavar="RUN2", help="a second run to overlay (dashed)")
    p.add_argument("--out", type=nonempty, help="output directory (written atomically); omit to only print")
    add_options(p, TrajectoryOptions)
    add_config_option(p)
    add_checkpoint_options(p, device=WEIGHTS_DEVICE_HELP)
    p.set_defaults(func=_run_trajectory)


def _run_trajectory(args) -> None:
    from ..outputs import check_destination
    from ..weights.trajectory import analyse_trajectory, save_trajectory

    if args.out:
        check_destination(args.out, "trajectory", [*args.run, args.compare, args.config])
    kw = dict(
        **vars(from_args(TrajectoryOptions, args)),
        device=args.device,
        progress=not args.quiet and is_root(),
        allow_pickle=args.allow_pickle,
        config=args.config,
    )
    source = hub_trajectory(args) if args.revisions or args.subfolders else args.run
    main_run = analyse_trajectory(source if len(source) > 1 else source[0], evict=args.evict, **kw)
    other = analyse_trajectory(args.compare, **kw) if args.compare else None
    if not is_root():  # under a launcher, rank 0 alone prints and writes
        return
    for t in [main_run] + ([other] if other else []):
        print(t.format())
    sys.stdout.flush()
    if args.out:
        save_trajectory(args.out, main_run, other)
        print(f"\nwrote {args.out}/trajectory.csv, summary.json, trajectory.png/.pdf")


# -- compare ----------------------------------------------------------------------------------------
def _add_compare(sub) -> None:
    p = add_command(
        sub,
        "compare",
        "two updates side by side: cosine, size, density, mask overlap (PRISM Eq. 2, F12, F26)",
        """\
        Compare U1 = B1 - A1 with U2 = B2 - A2 (same architecture), per component and overall:
        cosine(U1, U2) (Eq. 2), normalized L2 of each and their ratio, fraction changed of each
        (|d| > tau |a|) and the difference in percentage points, the Jaccard overlap of the two
        changed masks, the overlap expected by chance for masks of those densities, and the
        one-sided overlaps.""",
        """\
        examples:
          prism compare base rl_base mid rl_mid --out cmp/rl_start      # F26: RL from base vs mid
          prism compare base mid_mc base mid_mcs --out cmp/mc_vs_mcs    # F12/T13: MC vs MCS

        writes OUT/compare.csv, OUT/summary.json and OUT/compare_components.{png,pdf}.""",
    )
    for name, text in (
        ("a1", "start of update 1"),
        ("b1", "end of update 1"),
        ("a2", "start of update 2"),
        ("b2", "end of update 2"),
    ):
        p.add_argument(name, type=nonempty, help=text)
    p.add_argument("--out", type=nonempty, help="output directory (written atomically); omit to only print")
    p.add_argument("--labels", nargs=2, default=("U1", "U2"), metavar=("L1", "L2"), help="names for the figure")
    add_options(p, CompareOptions)
    add_checkpoint_options(p, device=WEIGHTS_DEVICE_HELP)
    p.set_defaults(func=_run_compare)


def _run_compare(args) -> None:
    from ..outputs import check_destination
    from ..weights.compare import compare_updates

    if args.out:
        check_destination(args.out, "compare", [args.a1, args.b1, args.a2, args.b2])
    res = compare_updates(
        args.a1,
        args.b1,
        args.a2,
        args.b2,
        **vars(from_args(CompareOptions, args)),
        device=args.device,
        progress=not args.quiet and is_root(),
        allow_pickle=args.allow_pickle,
        labels=tuple(args.labels),
    )
    if not is_root():  # under a launcher, rank 0 alone prints and writes
        return
    print(res.format(), flush=True)
    if args.out:
        res.save(args.out)
        print(f"\nwrote {args.out}/compare.csv, summary.json, compare_components.png/.pdf")


# -- interpolate ------------------------------------------------------------------------------------
def _add_interpolate(sub) -> None:
    p = add_command(
        sub,
        "interpolate",
        "write W(a, b) = base + a (mid - base) + b (rl - mid) (PRISM Eq. 3)",
        """\
        Write the interpolated weights W(a, b) = W_base + a (W_mid - W_base) + b (W_rl - W_mid)
        as a loadable Hugging Face checkpoint (stored dtype; config and tokenizer from base).
        W(0,0), W(1,0), W(1,1) reproduce base, mid and rl bit for bit. The three checkpoints must
        have the same architecture, depth and tensor shapes.""",
        """\
        examples:
          prism interpolate base mid rl --a 1 --b 0.5 --out interp/a1_b0.5
          prism interpolate base mid rl --a 0.5 --b 0 --out interp/halfway_to_mid""",
    )
    p.add_argument("base", type=nonempty, help="the base checkpoint")
    p.add_argument("mid", type=nonempty, help="the mid-trained checkpoint")
    p.add_argument("rl", type=nonempty, help="the checkpoint after RL")
    coefficient = number(float, low=-1e3, high=1e3)
    p.add_argument("--a", type=coefficient, required=True, help="weight of the mid-training update (|a| <= 1000)")
    p.add_argument("--b", type=coefficient, required=True, help="weight of the RL update (|b| <= 1000)")
    p.add_argument("--out", type=nonempty, required=True, help="output checkpoint directory (written atomically)")
    add_checkpoint_options(p, device=None)
    p.set_defaults(func=_run_interpolate, one_process=True)


def _run_interpolate(args) -> None:
    from ..weights.interpolate import interpolate

    out = interpolate(
        args.base,
        args.mid,
        args.rl,
        args.a,
        args.b,
        args.out,
        progress=not args.quiet,
        allow_pickle=args.allow_pickle,
    )
    print(f"wrote {out} = W(a={args.a:g}, b={args.b:g})")


#: This package's command table: functions that add one subcommand each to a subparsers object.
COMMANDS = [_add_audit, _add_cka, _add_diff, _add_trajectory, _add_compare, _add_interpolate]
