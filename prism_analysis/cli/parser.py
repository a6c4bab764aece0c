"""The parser framework of ``prism``, shared by the analysis and the training commands.

A command is declared by a function ``add(sub)`` that adds its subparser (:func:`add_command`) with
a ``func`` default; :func:`run` parses, runs it and turns every failure into the contract users see:

- bad input (missing files, corrupt checkpoints, mismatched models, bad options) prints one line
  ``prism: error: <file or option>: <problem>`` and exits with status 2, with no traceback and no
  partial output; an error a library function raises about one of its parameters
  (:class:`~prism_analysis.errors.PrismError` with ``param``) is shown with that parameter's flag
  (:data:`FLAGS`: the one place parameters are mapped to flags);
- an ``--out`` that would overwrite an input or a directory the command did not write is refused
  before any work starts; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from ..errors import PrismError, from_os_error
from ..options import nonempty, number, number_list


def _default_flag(param: str) -> str:
    return "--" + param.replace("_", "-")


def _renamed_flags() -> dict[str, str]:
    from ..options import flags
    from .api_options import API

    renamed = {name: f for cls in API for name, f in flags(cls).items() if f != _default_flag(name)}
    return {name: f for name, f in renamed.items() if not f.startswith("--no-")}


#: Python parameter of the library -> its command-line flag, where the two names differ (otherwise
#: the flag is ``--`` + the parameter with ``_`` as ``-``), read off the options' dataclasses
#: (:mod:`~prism_analysis.cli.api_options`): ``{"measures": "--measure", "sample_size": "--sample"}``.
FLAGS = _renamed_flags()


def flag(param: str) -> str:
    """The command-line flag of a library parameter (:data:`FLAGS`)."""
    return FLAGS.get(param, _default_flag(param))


EXIT_BAD_INPUT = 2


EXIT_INTERRUPTED = 130


THRESHOLD_LIST = number_list(float, percent=True, low=0)


TAU = number(float, low=0)


POSITIVE = number(int, low=1)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (``prism CMD: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())}\n")


#: The ``--device`` default of the weight statistics (audit, trajectory, compare):
#: :data:`prism_analysis.devices.WEIGHTS_DEVICE`.
WEIGHTS_DEVICE_HELP = "cpu, also where a GPU is: reading the files dominates"


def add_checkpoint_options(p, device: str | None = "cuda if any") -> None:
    """Options every command that reads checkpoints has; ``device``: the default ``--device`` help
    names (None: no ``--device``)."""
    if device:
        p.add_argument("--device", default=None, help=f"where the work runs: cpu, cuda, cuda:N (default: {device})")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also read .bin/.pt checkpoints, with torch.load(weights_only=True); off by default (pickle can run code)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_config_option(p) -> None:
    """``--config``: the architecture of torch.distributed.checkpoint inputs, which store no config.json."""
    p.add_argument(
        "--config",
        type=nonempty,
        default=None,
        metavar="PATH",
        help="config.json (or a directory holding one) for torch.distributed.checkpoint (DCP) inputs "
        "(default: config.json in the DCP directory or its parent); HF checkpoints use their own",
    )


def add_command(sub, name: str, help: str, description: str, epilog: str = ""):
    """A subcommand parser whose description and examples keep their line breaks."""
    return sub.add_parser(
        name,
        help=help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent(description),
        epilog=textwrap.dedent(epilog),
    )


def warn_unused_config(config, inputs) -> None:
    """A warning when ``--config`` is given but no input is a torch.distributed.checkpoint directory."""
    if not config:
        return  # before the import below, which imports torch
    from ..checkpoints.dcp import is_dcp_checkpoint

    if not any(is_dcp_checkpoint(p) for p in inputs):
        from ..errors import warn

        warn(f"--config {config} is not used: no input is a torch.distributed.checkpoint directory")


DESCRIPTION = """\
    PRISM toolkit: see what training does to a language model's weights and representations
    (Runwal et al., "PRISM: Demystifying Retention and Interaction in Mid-Training", 2026).

    Every command reads Hugging Face checkpoints (safetensors; pickle only with --allow-pickle);
    audit, trajectory, compare and interpolate also read sharded torch.distributed.checkpoint
    directories in place. Each writes tidy tables (CSV/JSON) and figures, and prints a short summary."""


def build_parser(commands) -> argparse.ArgumentParser:
    """The ``prism`` parser with the given command tables."""
    from .. import __version__

    parser = OneLineParser(
        prog="prism",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent(DESCRIPTION),
        epilog="Run 'prism COMMAND --help' for the options and examples of one command.",
    )
    parser.add_argument("--version", action="version", version=f"prism {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)
    for add in commands:
        add(sub)
    for command in sub.choices.values():
        add_nproc_option(command)
    return parser


def add_nproc_option(p) -> None:
    """``--nproc N``: run the command in N processes (``torch.distributed.run``, one node)."""
    p.add_argument(
        "--nproc",
        type=POSITIVE,
        default=1,
        metavar="N",
        help="run in N processes on this machine through torch.distributed's launcher (default 1; audit, "
        "trajectory, compare, cka, diff, train and rl split their work, the other commands run in one process); "
        "for several nodes run 'torchrun ... prism COMMAND' instead (see docs/guide/distributed.md)",
    )


def run(argv: list[str] | None, commands, module: str = "prism_analysis.cli") -> int:
    """Parse ``argv`` and run the command; bad input -> one line on stderr and exit status 2.

    ``--nproc N`` relaunches the command in N processes through torch.distributed's launcher
    (``python -m MODULE`` in each, :mod:`prism_analysis.launch`). Under a launcher every rank runs
    the command; an error on any rank ends all of them, and rank 0 prints it.
    """
    from .. import distributed

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(commands).parse_args(argv)
    try:
        if getattr(args, "one_process", False) and (args.nproc > 1 or distributed.world_size() > 1):
            raise PrismError(f"'prism {args.command}' runs in one process; run it without --nproc or a launcher")
        if getattr(args, "nproc", 1) > 1:
            from ..launch import relaunch

            return relaunch(module, argv, args.nproc)
        try:
            args.func(args)
        except Exception as e:  # tell the other ranks, in step (one process: re-raised as it is)
            distributed.finish(e)
        distributed.finish()
    except PrismError as e:
        if isinstance(e, distributed.RankFailed) and not distributed.is_root():
            return EXIT_BAD_INPUT  # rank 0 prints the error of the rank that failed
        message = e.render(flag(e.param) if e.param else None)
        print(f"prism: error: {' '.join(message.split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # output piped into `head`: stop quietly
        os._exit(0)
    except OSError as e:  # disk full, permission denied, ... met while writing
        print(f"prism: error: {from_os_error(e, 'cannot complete')}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ModuleNotFoundError as e:
        print(
            f"prism: error: '{args.command}' needs the package {e.name!r}, which is not installed "
            "(pip install 'prism-toolkit[train]' installs what training needs)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("prism: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
