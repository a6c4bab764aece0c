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


#: Where a parameter's name stands in a problem's text: the Python name (``measures``) for a caller
#: of the library, the flag (``--measure``) on the command line (:func:`prism_analysis.cli.parser.flag`).
PARAM = "{@param}"


class PrismError(Exception):
    """Bad input: names the offending file (when there is one) and the problem, in one line.

    ``param``: the library parameter the problem is about; :data:`PARAM` in ``problem`` stands for
    its name, which :meth:`render` fills in (the Python name by default, a CLI flag on request)::

        >>> e = PrismError(f"{PARAM}: unknown 'nope'", param="measures")
        >>> str(e), e.render("--measure")
        ("measures: unknown 'nope'", "--measure: unknown 'nope'")
    """

    def __init__(self, problem: str, path: str | os.PathLike | None = None, param: str | None = None):
        self.problem = problem
        self.path = None if path is None else os.fspath(path)
        self.param = param
        super().__init__(self.render())

    def render(self, name: str | None = None) -> str:
        """The one-line message, with ``name`` (default: the parameter's Python name) for :data:`PARAM`."""
        text = self.problem.replace(PARAM, name or self.param) if self.param else self.problem
        return f"{self.path}: {text}" if self.path else text


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
