"""The miniature PRISM study (``prism reproduce``), one module per job, in the order data flows::

    design        what is trained and compared: MODELS, the mixes, the audited pairs, PRESETS, STAGES
    -> run        the Study runner: stages 1-5 (pretrain, mid, rl, eval, analyse), cached; reproduce()
    -> analysis   stage 5: every PRISM analysis of the trained models, on plain paths
    -> report     stage 6: figures, tables, summary.json and report.md, one function per section,
                  from the saved tables only
       findings   each claim of the paper, ours, and whether ours reproduces it (for the report)
    -> export     ``prism figures``: a run's figures and tables redrawn into figures/, tables beside them

The runner is importable from here, lazily (importing the package loads no torch)::

    from prism_train.study import Study, reproduce
"""

from prism_analysis._lazy import exports

API = {"Study": "run", "reproduce": "run"}
__all__ = list(API)
__getattr__, __dir__ = exports(__name__, API)
