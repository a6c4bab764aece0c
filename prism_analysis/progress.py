"""Progress bars that suit both a terminal and a log file.

On a terminal (or in a notebook) a bar redraws in place, as tqdm does. When stderr is not a terminal (CI, ``nohup``,
a redirected log) every redraw would become one more line, and a study's log grows to megabytes of
bars; there the bar is written at most once every :data:`LOG_INTERVAL` seconds, and its final state
stays on its own line.
"""

from __future__ import annotations

import sys

#: Seconds between two progress lines when stderr is not a terminal.
LOG_INTERVAL = 60.0


def interactive() -> bool:
    """Whether progress is watched live: stderr is a terminal, or this runs in a Jupyter kernel."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """A ``tqdm`` bar (``kwargs`` as tqdm's), throttled when stderr is not a terminal."""
    from tqdm.auto import tqdm

    if not interactive():
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        kwargs.setdefault("maxinterval", LOG_INTERVAL)
        kwargs["leave"] = True
        kwargs.setdefault("ascii", True)
    else:
        kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=not enabled, **kwargs)
