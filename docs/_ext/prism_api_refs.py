"""Sphinx extension: links by public name, and an error for every broken link to our own code.

The guide links to objects by their public name (``{py:func}`prism_analysis.audit```), as users
import them; this resolves such a name to wherever the object is documented now -- through the
package's ``API`` table (``prism_analysis.API``, ``prism_analysis.checkpoints.API``) or, failing
that, the one documented object of that name -- so moving a function between modules needs no
change to the guide. A ``prism_*`` reference outside the generated API pages that still resolves
to nothing is a warning (an error under ``-W``): a metric's link can never silently go dead.
"""

from __future__ import annotations

import importlib

from sphinx.util import logging

logger = logging.getLogger(__name__)
PREFIXES = ("prism_analysis", "prism_train", "prism_cli")


def _api_target(target: str) -> str | None:
    """``pkg.Name`` -> ``pkg.<module>.Name`` from ``pkg.API`` (walking up: ``prism_analysis.checkpoints``)."""
    package, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    table = getattr(module, "API", None)
    if isinstance(table, dict) and name in table:
        return f"{package}.{table[name]}.{name}"
    return None


def _missing(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target.startswith(PREFIXES):
        return None
    domain = env.get_domain("py")
    builder = app.builder
    candidates = []
    mapped = _api_target(target)
    if mapped:
        candidates.append(mapped)
    tail = "." + target.rpartition(".")[2]
    found = sorted(n for n in domain.objects if n.endswith(tail) and n.startswith(target.split(".")[0]))
    if len(found) == 1:
        candidates.append(found[0])
    for cand in candidates:
        newnode = node.deepcopy()
        newnode["reftarget"] = cand
        newnode["refspecific"] = False
        hit = domain.resolve_xref(env, node["refdoc"], builder, node["reftype"], cand, newnode, contnode)
        if hit is None:  # e.g. :func: written for a class: try any role
            hits = domain.resolve_any_xref(env, node["refdoc"], builder, cand, newnode, contnode)
            hit = hits[0][1] if hits else None
        if hit is not None:
            return hit
    if not node["refdoc"].startswith("api/"):
        logger.warning("broken link to %s (no documented object of that name)", target, location=node)
    return None


def setup(app):
    app.connect("missing-reference", _missing)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
