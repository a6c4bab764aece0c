"""The ``prism`` command: the analysis commands of :mod:`prism_analysis` and the training commands
of :mod:`prism_train`, in one parser.

This module is the only place that knows both packages; ``prism_analysis`` never imports
``prism_train``, so the analysis library installs and imports alone. Run it as ``prism`` (the
installed script), ``python -m prism_cli``, or under a launcher (``torchrun``, ``accelerate launch``).
"""

from __future__ import annotations


def commands() -> list:
    """Both command tables: analysis first, then training."""
    from prism_analysis.cli.commands import COMMANDS as ANALYSIS
    from prism_train.cli import COMMANDS as TRAINING

    return ANALYSIS + TRAINING


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (tests and scripts call this)."""
    from prism_analysis.cli.parser import run

    return run(argv, commands(), module="prism_cli")


def console() -> None:
    """The installed ``prism`` script and ``python -m prism_cli``: :func:`main`, then exit without
    the interpreter's teardown (:func:`prism_analysis.fast_exit.exit_now`)."""
    from prism_analysis.fast_exit import exit_now

    exit_now(main())


__all__ = ["commands", "console", "main"]

if __name__ == "__main__":  # pragma: no cover
    console()
