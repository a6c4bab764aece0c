"""End a prism process without the interpreter's teardown (:func:`exit_now`): the ``prism``
console entry points and the figure helper process. A shared top-level module, below every
subpackage, so both can use it.
"""

from __future__ import annotations

import contextlib
import os
import sys

from .errors import from_os_error


def exit_now(code: int) -> None:
    """End the ``prism`` process with ``code`` without the interpreter's teardown: the atexit
    handlers run (process groups are left, logs and temporary files cleaned up, as in a normal
    exit), stdout and stderr are flushed, then :func:`os._exit`. Tearing down torch's modules
    object by object takes 0.3-0.5 s of every command on a 2-core machine
    (``benchmarks/startup.py``), after every output is written and closed. When a thread other
    than the main one is still running, the normal exit (which waits for it) is taken instead.
    Only the console entry points (and the figure helper,
    :mod:`prism_analysis.figure_process`) call this; :func:`prism_analysis.cli.parser.run` returns
    to its caller."""
    import atexit
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if others or not hasattr(atexit, "_run_exitfuncs"):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a closed pipe or stream: nothing more to say
            pass
        except OSError as e:  # a full disk under `prism ... > file`: the output is cut short
            with contextlib.suppress(OSError, ValueError):
                print(f"prism: error: {from_os_error(e, 'cannot write the output')}", file=sys.stderr)
                sys.stderr.flush()
            code = code or 120  # what Python's own exit returns when the final flush fails
    with contextlib.suppress(Exception):  # what native code printed through C's stdio (NCCL, numba)
        import ctypes

        ctypes.CDLL(None).fflush(None)
    os._exit(code)
