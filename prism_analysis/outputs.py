"""Write results so that nothing half-written is left behind and nothing of the user's is lost.

Every command writes its output directory through :func:`atomic_output_dir`: into a temporary
directory beside it, which replaces the destination in one rename when complete. The helper never
deletes what it did not write:

- an ``--out`` that is one of the command's inputs, or contains one, is refused;
- an existing file, or a non-empty directory that is not a previous output of the same command,
  is refused (outputs are marked with a hidden :data:`MARKER` file naming the command);
- a previous output of the same command is replaced: it is first renamed to ``.NAME.old-PID``, the
  new one renamed into place, then the old one removed. A crash between the two renames is repaired
  on the next run (the old output is put back), and temporaries of processes that died
  (``.NAME.tmp-PID-*``) are removed then.

:func:`write_json` writes one file the same way (temp file, then rename).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path

from .errors import PARAM, PrismError, from_os_error, os_problem_in
from .references import split_reference

#: Hidden file in every output directory: ``{"command": "audit", "tool": "prism"}``.
MARKER = ".prism-output.json"


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        return _jsonable(x.item())
    return x


def write_atomic(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp)`` with a temporary path beside ``path``, then rename it to ``path``: a
    reader sees the old file or the new one, never half of one. The file gets the permissions
    of any file the user creates (the umask). OS errors become one :class:`PrismError`."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise from_os_error(e, "cannot write", path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON atomically (NaN -> null, inf -> "inf")."""

    def write(tmp):
        with open(tmp, "x") as f:
            json.dump(_jsonable(data), f, indent=2)
            f.write("\n")

    write_atomic(path, write)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_output_of(path: Path, command: str) -> bool:
    """Whether directory ``path`` was written by ``prism COMMAND`` (it holds the marker)."""
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == "prism" and data.get("command") == command


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _input_paths(src) -> list[Path]:
    """The paths an input names: itself, or both halves of ``BASE+ADAPTER`` (:mod:`prism_analysis.references`)."""
    if "+" not in str(src) or Path(src).exists():
        return [Path(src)]
    return [Path(p) for p in split_reference(src) or [src]]


def check_destination(out: str | os.PathLike, command: str, inputs=()) -> Path:
    """Refuse an output path that would destroy something the command did not write.

    Returns the path. Raises :class:`PrismError` when ``out`` is empty, the current directory, a
    file system root or home, an input (or contains one), an existing file, or a non-empty
    directory that is not a previous output of ``prism COMMAND``.
    """
    if not str(out).strip():
        raise PrismError(f"{PARAM} must not be empty", param="out")
    out = Path(out)
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        raise PrismError("refusing to write into this directory itself; name a new directory", out)
    for src in inputs:
        if src is None or not str(src):
            continue
        for p in _input_paths(src):
            if p.exists() and _inside(p.resolve(), resolved):
                raise PrismError(f"refusing to write over an input of this command ({src})", out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise PrismError(f"exists and is not a directory; remove it or name another {PARAM}", out, param="out")
    if out.is_dir() and any(out.iterdir()) and not is_output_of(out, command):
        raise PrismError(
            f"directory is not empty and was not written by 'prism {command}'; name a new or empty directory", out
        )
    return out


def recover_leftovers(parent: Path, name: str) -> None:
    """Repair what a killed run left beside ``parent/name``: restore an output that was being
    replaced, delete temporaries of processes that no longer run."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(tmp|old)-(\d+)(?:-.*)?$")
    try:
        leftovers = list(parent.iterdir())
    except OSError:
        return
    for p in leftovers:
        m = pattern.match(p.name)
        if not m or pid_alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not (parent / name).exists():
            os.replace(p, parent / name)  # the new output never arrived: put the old one back
        else:
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: Path, action: str = "cannot write the output"):
    """Yield a new temporary directory beside ``final``; when the block succeeds it takes
    ``final``'s place: an existing ``final`` is first renamed to ``.NAME.old-PID``, the new one
    renamed into place, then the old one removed (:func:`recover_leftovers` repairs a crash in
    between).
    On any error the temporary directory is removed; OS errors become one :class:`PrismError`."""
    parent = final.parent
    tmp = parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()  # mode from the umask, as any directory the user makes (mkdtemp's is private)
    except OSError as e:
        raise from_os_error(e, action, final) from None
    try:
        yield tmp
        old = None
        if final.exists():
            old = parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except Exception as e:  # a full disk shows as OSError, or inside a library's own error
        shutil.rmtree(tmp, ignore_errors=True)
        problem = os_problem_in(e)
        if problem is None:
            raise
        raise PrismError(f"{action} ({problem})", final) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, command: str, inputs=()):
    """Yield a temporary directory beside ``out``; on success it replaces ``out`` in one rename.

    ``command`` names the writer (marks the output); ``inputs`` are the paths the command reads,
    which ``out`` may never be nor contain (:func:`check_destination`). On any error the temporary
    directory is removed and ``out`` is left as it was.
    """
    out = check_destination(out, command, inputs)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        recover_leftovers(parent, out.name)
    except OSError as e:
        raise from_os_error(e, "cannot create the output directory", out) from None
    out = check_destination(out, command, inputs)  # recovery may have restored it
    with staged_dir(parent / out.name) as tmp:
        yield tmp
        (tmp / MARKER).write_text(json.dumps({"tool": "prism", "command": command}) + "\n")
