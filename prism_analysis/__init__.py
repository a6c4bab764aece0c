"""prism_analysis: what training does to a language model's weights and representations.

Implements the measurements of PRISM (Runwal et al., arXiv 2603.17074). The library installs and
imports alone (the training package, ``prism_train``, is optional). Data flows one way::

    checkpoints/      open any checkpoint, align two, stream their tensors   (reads files)
        -> weights/           update statistics of aligned tensors: audit, compare, trajectory
        -> representations/   activations of a forward pass: CKA, similarity, model CKA
        -> tracking/          the same statistics live, inside a training run
    -> tidy tables (pandas, CSV, summary.json) -> figures.py (drawn from saved tables)

Top-level modules hold what every layer shares: :mod:`~prism_analysis.metrics` (the metric
definitions), :mod:`~prism_analysis.components` (tensor name -> layer and component),
:mod:`~prism_analysis.accumulator` (update / compute / merge statistics), and the plumbing
(:mod:`~prism_analysis.errors`, :mod:`~prism_analysis.options`, :mod:`~prism_analysis.outputs`,
:mod:`~prism_analysis.progress`, :mod:`~prism_analysis.devices`, :mod:`~prism_analysis.distributed`,
:mod:`~prism_analysis.launch`). The commands of ``prism`` are in :mod:`prism_analysis.cli`.

The public API is importable from here, lazily (importing the package loads no torch)::

    >>> import prism_analysis as pa
    >>> {"audit", "open_checkpoint", "linear_cka", "UpdateTracker"} <= set(pa.__all__)
    True
"""

from __future__ import annotations

from . import _moved
from ._lazy import exports
from .errors import PrismError

__version__ = "0.2.0"

#: public name -> the module (under prism_analysis) that defines it. ``model_cka`` and ``interpolate``
#: join in 0.3, when the old module paths of the same names (:mod:`prism_analysis._moved`) are gone.
API = {
    "open_checkpoint": "checkpoints.opening",
    "open_aligned": "checkpoints.opening",
    "Checkpoint": "checkpoints.local",
    "audit": "weights.audit",
    "Audit": "weights.audit",
    "UpdateStats": "weights.update",
    "OverlapStats": "weights.overlap",
    "compare_updates": "weights.compare",
    "Comparison": "weights.compare",
    "analyse_trajectory": "weights.trajectory",
    "Trajectory": "weights.trajectory",
    "SpectralStats": "weights.spectral",
    "linear_cka": "representations.cka",
    "layerwise_cka": "representations.cka",
    "cka_matrix": "representations.cka",
    "StreamingCKA": "representations.cka",
    "MinibatchCKA": "representations.cka",
    "ModelCKA": "representations.model_cka",
    "similarity_table": "representations.similarity",
    "collect_activations": "representations.activations",
    "UpdateTracker": "tracking.tracker",
    "PrismCallback": "tracking.callback",
}

__all__ = ["PrismError", "__version__", *API]


__getattr__, __dir__ = exports(__name__, API)

_moved.install()
