"""Weights: update statistics of aligned tensors, and the pipelines that stream checkpoints through them.

- :mod:`~prism_analysis.weights.update`      :class:`UpdateStats`: normalized L2 (Eq. 1), fraction changed, equality
- :mod:`~prism_analysis.weights.overlap`     :class:`OverlapStats`: cosine of two updates (Eq. 2), changed-mask overlap
- :mod:`~prism_analysis.weights.fused`       the vectorized numba CPU kernels behind both
- :mod:`~prism_analysis.weights.spectral`    update geometry: effective rank, principal angles, bf16 visibility
- :mod:`~prism_analysis.weights.units`       per attention head and MLP neuron
- :mod:`~prism_analysis.weights.measure`     the one loop: stream aligned tensors, measure, merge (``measure_aligned``)
- :mod:`~prism_analysis.weights.audit`       a checkpoint pair (T12, T22, T23, F11); ``report``: as text
- :mod:`~prism_analysis.weights.compare`     two updates side by side (F12, T13, F26)
- :mod:`~prism_analysis.weights.trajectory`  front-loading over a checkpoint sequence (F16)
- :mod:`~prism_analysis.weights.interpolate` W(a, b) between base, mid and RL (Eq. 3, F13)

Imports :mod:`~prism_analysis.checkpoints` and the top-level modules only (``tests/test_structure.py``).
The functions ``audit`` and ``interpolate`` share their module's name: import them from the top
(``prism_analysis.audit``) or from their module.
"""

from .._lazy import exports

API = {
    "UpdateStats": "update",
    "OverlapStats": "overlap",
    "SpectralStats": "spectral",
    "Audit": "audit",
    "Comparison": "compare",
    "compare_updates": "compare",
    "Trajectory": "trajectory",
    "analyse_trajectory": "trajectory",
    "Statistic": "measure",
    "measure_aligned": "measure",
}
__all__ = list(API)
__getattr__, __dir__ = exports(__name__, API)
