"""The one error type users see. The CLI prints it as a single line and exits with status 2."""

from __future__ import annotations

import os


class PrismError(Exception):
    """Bad input: names the offending file (when there is one) and the problem, in one line."""

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.problem = problem
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
