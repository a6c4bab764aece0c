"""The one error type users see. The CLI prints it as a single line and exits with status 2.

Operating-system errors (permission denied, disk full, ...) are turned into that line in one place,
:func:`os_problem`, so every command words them the same way.
"""

from __future__ import annotations

import errno
import os
import re

_OS_PROBLEMS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EBUSY: "device or resource busy",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a path component is not a directory",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "directory not empty",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error",
}


class PrismError(Exception):
    """Bad input: names the offending file (when there is one) and the problem, in one line."""

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.problem = problem
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def warn(message: str) -> None:
    """One line on stderr, ``prism: warning: <message>``, for input the command accepts with a change."""
    import sys

    print(f"prism: warning: {' '.join(message.split())}", file=sys.stderr)


def os_problem(e: OSError) -> str:
    """A short, one-line description of an OS error (``permission denied``, ``no space left ...``)."""
    if e.errno in _OS_PROBLEMS:
        return _OS_PROBLEMS[e.errno]
    return " ".join((e.strerror or str(e) or type(e).__name__).split())


def os_problem_in(e: BaseException) -> str | None:
    """The OS problem behind ``e``: an OSError, or a library error that carries one in its message
    (safetensors' Rust writer reports ``... (os error 28)`` for a full disk); None for anything else."""
    if isinstance(e, OSError):
        return os_problem(e)
    m = re.search(r"os error (\d+)", str(e))
    return os_problem(OSError(int(m.group(1)), "")) if m else None


def from_os_error(e: OSError, action: str, path: str | os.PathLike | None = None) -> PrismError:
    """``PrismError("<action> (<problem>)", <the file>)`` for an OS error met while doing ``action``."""
    return PrismError(f"{action} ({os_problem(e)})", path if path is not None else e.filename)
