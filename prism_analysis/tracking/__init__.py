"""Live tracking: PRISM's statistics while a run trains, without saving checkpoints.

- :mod:`~prism_analysis.tracking.tracker`   :class:`UpdateTracker`: step() after each optimizer step, finish()
- :mod:`~prism_analysis.tracking.snapshots` the parameters by checkpoint name, and reference copies of them
- :mod:`~prism_analysis.tracking.callback`  :class:`PrismCallback` for ``transformers.Trainer`` and TRL
"""

from .._lazy import exports

API = {
    "UpdateTracker": "tracker",
    "read_tracking": "tracker",
    "Snapshot": "snapshots",
    "named_tensors": "snapshots",
    "clean_name": "snapshots",
    "PrismCallback": "callback",
}
__all__ = list(API)
__getattr__, __dir__ = exports(__name__, API)
