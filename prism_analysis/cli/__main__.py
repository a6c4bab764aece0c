"""``python -m prism_analysis.cli``: the analysis commands alone (without the training commands)."""

import sys

from .commands import COMMANDS
from .parser import run

if __name__ == "__main__":
    sys.exit(run(None, COMMANDS, module="prism_analysis.cli"))
