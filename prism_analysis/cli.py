"""The ``prism`` command line. Each subcommand is a thin layer over the Python API.

Errors in the input (missing files, corrupt checkpoints, mismatched models) print one line
``prism: error: <file>: <problem>`` and exit with status 2, with no traceback and no partial output.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

from .errors import PrismError

EXIT_BAD_INPUT = 2


def _thresholds(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x.strip().rstrip("%")) / (100 if x.strip().endswith("%") else 1)
                       for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("thresholds must be non-negative, e.g. 0.001,0.01 or 0.1%,1%")
    return values


def _add_audit(sub) -> None:
    p = sub.add_parser(
        "audit", help="update size and sparsity between two checkpoints (PRISM T12/T22/T23, F11)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Compare checkpoint B (later) against checkpoint A (earlier), tensor by tensor, streaming
            one pair at a time (memory stays at a few tensors, whatever the model size).

            Reports, per tensor, layer, component and for the whole model:
              normalized L2      ||W_B - W_A||_F / ||W_A||_F  (groups: over the concatenation)
              fraction changed   share of elements with |w_B - w_A| > tau * |w_A|, for every tau
              fraction equal     share of elements bitwise equal in the stored dtype
            A and B may be model directories (single or sharded safetensors) or .safetensors files."""),
        epilog=textwrap.dedent("""\
            examples:
              prism audit runs/base runs/mid --out audits/base_to_mid
              prism audit mid/model.safetensors rl/model.safetensors --thresholds 0.1%,1%,10%
              prism audit base/ mid/ --out out/ --device cuda     # statistics on the GPU

            writes OUT/summary.json, OUT/tensors.csv, OUT/layers.csv, OUT/components.csv and
            OUT/update_by_layer_and_component.{png,pdf} (F11); OUT appears only when complete."""))
    p.add_argument("a", help="earlier checkpoint (e.g. base)")
    p.add_argument("b", help="later checkpoint (e.g. mid-trained)")
    p.add_argument("--out", help="output directory (written atomically); omit to only print")
    p.add_argument("--thresholds", type=_thresholds, default=None, metavar="LIST",
                   help="relative-change thresholds, fractions or percents (default 0.1%%,0.5%%,1%%,2%%,5%%,10%%)")
    p.add_argument("--device", default=None, help="where statistics run (default: cuda if available, else cpu)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow .bin checkpoints, loaded with torch.load(weights_only=True)")
    p.add_argument("--no-figure", action="store_true", help="skip the F11 figure")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_audit)


def _run_audit(args) -> None:
    from .weights import DEFAULT_THRESHOLDS, audit
    result = audit(args.a, args.b, thresholds=args.thresholds or DEFAULT_THRESHOLDS, device=args.device,
                   progress=not args.quiet, allow_pickle=args.allow_pickle)
    if args.out:
        result.save(args.out, figure=not args.no_figure)
    print(result.format())
    if args.out:
        print(f"\nwrote {args.out}/summary.json, tensors.csv, layers.csv, components.csv"
              + ("" if args.no_figure else ", update_by_layer_and_component.png/.pdf"))


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job: build a tiny base model, train it briefly, audit the pair",
                       description="Build a tiny LLaMA-family base checkpoint, run a few real AdamW steps of "
                                   "next-token training on synthetic text to get a 'mid-trained' checkpoint, "
                                   "and audit base -> mid. Runs on a laptop CPU in well under a minute.")
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> None:
    from pathlib import Path

    from .demo import run_demo
    print(run_demo(Path(args.out), steps=args.steps))


def _add_cka(sub) -> None:
    p = sub.add_parser(
        "cka", help="layer-by-layer CKA between two checkpoints on probe prompts (PRISM F14/T14)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Run both checkpoints on the prompts of each probe file (one prompt per forward pass),
            pool every layer's hidden states (embedding output and every block), and compute the
            linear CKA of layer l of A with layer l of B over the prompts:

              CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),  X, Y column-centred   (Eq. 4)

            with PRISM's bootstrap interval (random subsets of half the prompts, 20 times).
            The number PRISM reports (T14) is the minimum over layers."""),
        epilog=textwrap.dedent("""\
            examples:
              prism cka runs/mid runs/rl --probe wiki.txt --probe gsm8k.jsonl --out cka/mid_vs_rl
              prism cka base/ mid/ --probe c4.txt --pool tokens          # every token a row, streamed
              prism cka base/ other/ --probe p.txt --all-pairs           # + L x L heatmap

            probe files: .txt (one prompt per line) or .jsonl (field "text").
            writes OUT/cka.csv (probe, layer, cka, ci_low, ci_high, ...), OUT/summary.json
            ({probe: {min_cka, argmin_layer, layers}}) and OUT/cka_by_layer.{png,pdf} (F14)."""))
    p.add_argument("a", help="first checkpoint (e.g. mid-trained)")
    p.add_argument("b", help="second checkpoint (e.g. after RL)")
    p.add_argument("--probe", action="append", required=True, metavar="FILE",
                   help="probe prompts (.txt or .jsonl); repeat for several probe sets")
    p.add_argument("--out", help="output directory (written atomically); omit to only print")
    p.add_argument("--pool", choices=["mean", "last", "tokens"], default="mean",
                   help="pooling over a prompt's tokens (default: mean, as PRISM)")
    p.add_argument("--n", type=int, default=200, help="prompts per probe set (default 200, as PRISM)")
    p.add_argument("--bootstrap", type=int, default=20, help="resamples for the interval (default 20; 0: none)")
    p.add_argument("--sample", type=int, default=None, help="prompts per resample (default: half of n)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debiased", action="store_true", help="debiased CKA (unbiased HSIC)")
    p.add_argument("--all-pairs", action="store_true", help="also every layer of A vs every layer of B (heatmap)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="model dtype (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts per forward pass (pads are masked)")
    p.add_argument("--max-length", type=int, default=512, help="truncate prompts to this many tokens")
    p.add_argument("--tokenizer", default=None, help="tokenizer path when the checkpoints have none")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_cka)


def _run_cka(args) -> None:
    from pathlib import Path

    from .model_cka import model_cka, read_probe
    probes = {}
    for f in args.probe:
        name = Path(f).stem
        if name in probes:
            raise PrismError("two probe files share this name; rename one", f)
        probes[name] = read_probe(f)
    result = model_cka(args.a, args.b, probes, pool=args.pool, n=args.n, bootstrap=args.bootstrap,
                       sample_size=args.sample, seed=args.seed, all_pairs=args.all_pairs, debiased=args.debiased,
                       device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                       max_length=args.max_length, tokenizer=args.tokenizer,
                       trust_remote_code=args.trust_remote_code, progress=not args.quiet)
    if args.out:
        result.save(args.out)
    print(result.format())
    if args.out:
        print(f"\nwrote {args.out}/cka.csv, summary.json, cka_by_layer.png/.pdf")


_ADDERS = [_add_audit, _add_cka, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prism",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            PRISM toolkit: see what training does to a language model's weights and representations
            (Runwal et al., "PRISM: Demystifying Retention and Interaction in Mid-Training", 2026).

            Every command reads Hugging Face checkpoints (safetensors; pickle only with --allow-pickle),
            writes tidy tables (CSV/JSON) and figures, and prints a short summary."""),
        epilog="Run 'prism COMMAND --help' for the options and examples of one command.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"prism {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _ADDERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except PrismError as e:
        print(f"prism: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("prism: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
