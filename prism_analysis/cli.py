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


_ADDERS = [_add_audit, _add_demo]


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
