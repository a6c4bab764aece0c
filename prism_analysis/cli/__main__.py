"""``python -m prism_analysis.cli``: the analysis commands alone (without the training commands)."""

from ..fast_exit import exit_now
from .commands import COMMANDS
from .parser import run

if __name__ == "__main__":
    exit_now(run(None, COMMANDS, module="prism_analysis.cli"))
