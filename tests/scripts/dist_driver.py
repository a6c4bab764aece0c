"""Run several ``prism`` commands in one launch: ``torchrun ... tests/scripts/dist_driver.py COMMANDS.json``.

COMMANDS.json holds a list of argument lists; each runs through ``prism_cli.main`` in turn in every
process of the launch (the process group is joined once and reused), so one torchrun start-up
serves several distributed checks. Exits with the largest exit status of the commands.
"""

import json
import sys
from pathlib import Path

from prism_cli import main

if __name__ == "__main__":
    commands = json.loads(Path(sys.argv[1]).read_text())
    sys.exit(max(main(argv) for argv in commands))
