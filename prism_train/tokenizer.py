"""The local byte-level BPE tokenizer of the study: :func:`prism_analysis.tiny.train_tokenizer`."""

from prism_analysis.tiny import SPECIAL_TOKENS, train_tokenizer

__all__ = ["SPECIAL_TOKENS", "train_tokenizer"]
