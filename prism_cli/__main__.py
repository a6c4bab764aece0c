"""``python -m prism_cli``: the ``prism`` command."""

import sys

from prism_cli import main

sys.exit(main())
