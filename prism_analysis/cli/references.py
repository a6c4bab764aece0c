"""Hub references on the command line: ``prism trajectory org/name --revisions LIST|PATTERN``.

Expands one Hub repository and its ``--revisions`` / ``--subfolders`` (a comma-separated list, or a
glob pattern matched against the repository's branches or folders) into the checkpoint references
of a trajectory, in step order (:func:`prism_analysis.checkpoints.hub.step_key`).
"""

from __future__ import annotations

from ..errors import PrismError


def hub_trajectory(args) -> list:
    """The Hub references of ``RUN --revisions ...`` / ``RUN --subfolders ...``, in step order."""
    from ..checkpoints import hub

    if len(args.run) != 1 or not hub.is_hub_reference(args.run[0]):
        raise PrismError("--revisions and --subfolders take one Hub repository as RUN (org/name)")
    repo = hub.parse_reference(args.run[0])
    refs = [repo]
    if args.revisions:
        if _is_pattern(args.revisions):
            names = hub.revisions(repo, args.revisions)
        else:
            names = sorted(args.revisions.split(","), key=hub.step_key)
        refs = [repo.at(revision=r) for r in names]
    if args.subfolders:
        out = []
        for r in refs:
            if _is_pattern(args.subfolders):
                folders = hub.subfolders(r, args.subfolders)
            else:
                folders = sorted(args.subfolders.split(","), key=hub.step_key)
            out += [r.at(subfolder=f) for f in folders]
        refs = out
    if len(refs) < 2:
        raise PrismError(f"a trajectory needs at least two checkpoints; found {[str(r) for r in refs]}")
    return refs


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")
