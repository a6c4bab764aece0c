"""Live tracking inside ``transformers.Trainer`` and the TRL trainers built on it: :class:`PrismCallback`.

::

    from prism_analysis.tracking import PrismCallback
    trainer = GRPOTrainer(..., callbacks=[PrismCallback(every=10, out="prism_tracking")])
    trainer.train()
"""

from __future__ import annotations

import sys

from transformers import TrainerCallback

from .tracker import UpdateTracker


# -- transformers / TRL ---------------------------------------------------------------------------
class PrismCallback(TrainerCallback):
    """:class:`UpdateTracker` as a ``transformers`` callback: works with ``Trainer`` and the TRL
    trainers built on it (``SFTTrainer``, ``GRPOTrainer``, ``DPOTrainer``).

    ``on_train_begin`` snapshots theta_0 (or, when the Trainer resumes from a checkpoint, restores
    it from ``out``); ``on_step_end`` (which sees ``state.global_step`` after the optimizer step, the
    number a ``checkpoint-N`` directory gets) measures; the metrics go into the Trainer's next log
    (keys under ``prism/``, so ``report_to`` backends plot them; a tracked step asks the Trainer to
    log); ``on_train_end`` writes ``out``. Options are :class:`UpdateTracker`'s; the tokenizer
    for a probe set defaults to the trainer's ``processing_class``.
    """

    def __init__(self, every: int = 10, out="prism_tracking", **options):
        self.every, self.out, self.options = every, out, options
        self.tracker: UpdateTracker | None = None
        self.pending: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        _run_before_reporters(self)
        options = dict(self.options)
        if options.get("probe") is not None and options.get("tokenizer") is None:
            options["tokenizer"] = getattr(processing_class, "tokenizer", processing_class)
        resume = state.global_step > 0
        self.tracker = UpdateTracker(
            model,
            every=self.every,
            out=self.out,
            step=state.global_step,
            resume=resume,
            total_steps=state.max_steps or None,
            **options,
        )

    def on_step_end(self, args, state, control, **kwargs):
        metrics = self.tracker.step(state.global_step)
        if metrics:
            self.pending |= metrics
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pending and logs is not None:
            logs.update(self.pending)
            if state.log_history:
                state.log_history[-1].update(self.pending)
            self.pending = {}

    def on_train_end(self, args, state, control, **kwargs):
        self.tracker.finish(state.global_step)


def _run_before_reporters(callback) -> None:
    """Move ``callback`` to the front of the Trainer's callback list, so that the ``prism/`` keys it
    adds to the logs reach the ``report_to`` callbacks (which the Trainer puts before the user's).
    The caller of an event method is ``CallbackHandler.call_event``, whose ``self`` is that list's owner."""
    from transformers.trainer_callback import CallbackHandler

    handler = sys._getframe(2).f_locals.get("self")
    if isinstance(handler, CallbackHandler) and callback in handler.callbacks:
        handler.callbacks.remove(callback)
        handler.callbacks.insert(0, callback)
