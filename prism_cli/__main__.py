"""``python -m prism_cli``: the ``prism`` command."""

from prism_cli import console

console()
