"""The ``trajectory.json`` manifest of a training run, and finding a run's checkpoints in step order.

A run directory written by ``prism train`` / ``prism rl`` (or by hand, for another trainer's
checkpoints) holds::

    RUN/trajectory.json   {"phase": ..., "parent": "<start checkpoint>",
                           "steps": [{"step": 0, "path": "step_000000"}, ...], ...}
    RUN/step_000000/      one Hugging Face checkpoint per saved step

Without a manifest, the step directories themselves (``step_20``, ``checkpoint-20`` as the HF
Trainer writes them, ``global_step20``, ``ckpt_20``, ``iter_20``) give the order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import PrismError, from_os_error

#: File name of a run's manifest.
MANIFEST = "trajectory.json"
STEP_DIR = re.compile(r"^(?:step|checkpoint|ckpt|global_step|iter)[-_]?(\d+)$")


def read_manifest(run: str | Path) -> dict | None:
    """The manifest of run directory ``run`` as a dict, or None when it has none."""
    f = Path(run) / MANIFEST
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except OSError as e:
        raise from_os_error(e, "cannot read the trajectory manifest", f) from None
    except ValueError:
        raise PrismError("corrupt trajectory manifest (not JSON)", f) from None
    if not isinstance(data, dict):
        raise PrismError("corrupt trajectory manifest (not a JSON object)", f)
    return data


def last_checkpoint(run: str | Path) -> Path:
    """The checkpoint of the last step saved in run directory ``run`` (from its manifest)."""
    m = read_manifest(run)
    if not m or not m.get("steps"):
        raise PrismError("has no saved step yet (its trajectory.json lists none)", run)
    return Path(run) / m["steps"][-1]["path"]


def discover(source) -> list[tuple[int, Path]]:
    """``[(step, checkpoint), ...]`` sorted by step, from a manifest, a run directory, or a list of
    checkpoints (paths or Hub references: their step is the last number of the revision or folder)."""
    from . import hub

    if isinstance(source, (list, tuple)):
        if len(source) == 1:
            return discover(source[0])
        out = []
        for i, p in enumerate(source):
            ref = hub.parse_reference(p)
            if isinstance(ref, hub.HubReference):  # step from the revision's or folder's name
                step = hub.step_key(ref.subfolder or ref.revision or "")[0]
                out.append((step if step >= 0 else i, ref))
            else:
                m = STEP_DIR.match(ref.name)
                out.append((int(m.group(1)) if m else i, ref))
        return sorted(out, key=lambda x: x[0])
    root = Path(source)
    if not root.exists():
        raise PrismError("no such file or directory", root)
    if root.is_file() and root.name == MANIFEST:
        root = root.parent
    if (root / MANIFEST).is_file():
        return _from_manifest(root)
    try:
        children = list(root.iterdir())
    except OSError as e:
        raise from_os_error(e, "cannot list the run directory", root) from None
    steps = [(int(m.group(1)), c) for c in children if (m := STEP_DIR.match(c.name)) and c.is_dir()]
    if len(steps) < 2:
        raise PrismError(f"no {MANIFEST} and fewer than two step directories (step_N, checkpoint-N, ...)", root)
    return sorted(steps)


def _from_manifest(run: Path) -> list[tuple[int, Path]]:
    data = read_manifest(run)
    manifest = run / MANIFEST
    try:
        entries = [(int(s["step"]), run / s["path"]) for s in data["steps"]]
    except (KeyError, TypeError, ValueError) as e:
        raise PrismError(f"not a valid trajectory manifest (bad or missing 'steps': {e})", manifest) from None
    for step, path in entries:
        if not path.exists():
            raise PrismError(f"step {step} is listed but its checkpoint {path} is missing", manifest)
    entries.sort(key=lambda x: x[0])
    parent = data.get("parent")
    if entries and entries[0][0] != 0 and isinstance(parent, str) and parent:
        p = Path(parent) if Path(parent).is_absolute() else run / parent
        if p.exists():
            entries.insert(0, (0, p))
    if len(entries) < 2:
        raise PrismError("a trajectory needs at least two checkpoints", manifest)
    return entries
