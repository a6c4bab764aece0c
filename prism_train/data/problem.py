"""A reasoning problem, and the rule that splits every text into train or eval.

Train and eval never overlap: a text belongs to the eval split iff a hash of it lands in the eval
bucket (1 in :data:`EVAL_BUCKETS`), and each split's generator keeps only its own items.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

EVAL_BUCKETS = 10  # 1 in 10 texts is eval-only

DOMAINS = ("general", "code", "math", "code_reasoning", "science")
REASONING_DOMAINS = ("math", "code_reasoning", "science")


@dataclass(frozen=True)
class Problem:
    """A reasoning problem: ``prompt`` (question + newline), ``completion`` (reasoning + answer)."""

    domain: str
    difficulty: int
    question: str
    reasoning: str
    answer: str

    @property
    def prompt(self) -> str:
        return f"Question: {self.question}\n"

    @property
    def completion(self) -> str:
        return f"<think>\n{self.reasoning}\n</think>\nAnswer: {self.answer}"

    @property
    def text(self) -> str:
        return self.prompt + self.completion


def in_split(text: str, split: str) -> bool:
    """True when ``text`` belongs to ``split`` ("train" or "eval"); a pure function of the text."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return (h % EVAL_BUCKETS == 0) == (split == "eval")
