"""Old module paths (before 0.2) still import, as aliases of where each module lives now.

``import prism_analysis.cka`` gives :mod:`prism_analysis.representations.cka` itself (the same module
object, so a monkeypatch or an ``isinstance`` check sees one module). Every alias but ``cka``, which
notebooks use and which stays, warns with a ``DeprecationWarning`` that names the new path; the
aliases go in 0.3 (CHANGELOG.md).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module (under prism_analysis) -> its module now
MOVED = {
    "checkpoint_base": "checkpoints.base",
    "checkpoint_reader": "checkpoints",
    "dcp_reader": "checkpoints.dcp",
    "lora": "checkpoints.lora",
    "hub": "checkpoints.hub",
    "run_manifest": "checkpoints.run_manifest",
    "fused": "weights.fused",
    "compare": "weights.compare",
    "spectral": "weights.spectral",
    "trajectory": "weights.trajectory",
    "interpolate": "weights.interpolate",
    "activations": "representations.activations",
    "model_loader": "representations.model_loader",
    "cka": "representations.cka",
    "similarity": "representations.similarity",
    "model_cka": "representations.model_cka",
}
#: aliases that stay (documented public paths)
KEPT = {"cka"}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``prism_analysis.<old>`` and loads it as the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        pkg, _, old = fullname.partition(".")
        if pkg != "prism_analysis" or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        old = spec.name.partition(".")[2]
        new = f"prism_analysis.{MOVED[old]}"
        if old not in KEPT:
            warnings.warn(f"{spec.name} moved to {new}; the old path goes in 0.3", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__  # the import system overwrites __spec__: put it back below
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state  # already executed at its new path


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
