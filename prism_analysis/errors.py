"""The one error type users see. The CLI prints it as a single line and exits with status 2.

Operating-system errors (permission denied, disk full, ...) are turned into that line in one place,
:func:`os_problem`, so every command words them the same way.
"""

from __future__ import annotations

import errno
import os

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


def os_problem(e: OSError) -> str:
    """A short, one-line description of an OS error (``permission denied``, ``no space left ...``)."""
    if e.errno in _OS_PROBLEMS:
        return _OS_PROBLEMS[e.errno]
    return " ".join((e.strerror or str(e) or type(e).__name__).split())


def from_os_error(e: OSError, action: str, path: str | os.PathLike | None = None) -> PrismError:
    """``PrismError("<action> (<problem>)", <the file>)`` for an OS error met while doing ``action``."""
    return PrismError(f"{action} ({os_problem(e)})", path if path is not None else e.filename)
