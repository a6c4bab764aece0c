"""Problems and documents of every domain, split into train and eval by a hash of the text."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
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


#: Difficulty levels drawn when none is given (easy problems twice as often).
LEVELS = (1, 1, 2, 3)


def generator(domain: str):
    """The problem maker of a reasoning domain: ``make(rng, difficulty) -> Problem``."""
    from . import code, math, science

    return {"math": math.make, "code_reasoning": code.make_reasoning, "science": science.make}[domain]


def problems(domain: str, split: str = "train", seed: int = 0, difficulty: int | None = None) -> Iterator[Problem]:
    """Endless, seeded stream of ``domain`` problems of ``split`` (``difficulty`` None: mixed levels)."""
    if domain not in REASONING_DOMAINS:
        raise ValueError(f"{domain!r} has no problems; reasoning domains: {', '.join(REASONING_DOMAINS)}")
    rng = random.Random(f"{domain}/{split}/{seed}")
    while True:
        yield draw_problem(domain, rng, split, difficulty)


def draw_problem(domain: str, rng: random.Random, split: str = "train", difficulty: int | None = None) -> Problem:
    """One ``domain`` problem of ``split`` drawn with ``rng`` (level from :data:`LEVELS` per attempt
    when ``difficulty`` is None); a pure function of the rng state."""
    make = generator(domain)
    while True:
        p = make(rng, difficulty if difficulty is not None else rng.choice(LEVELS))
        if in_split(p.question, split):
            return p


def documents(domain: str, split: str = "train", seed: int = 0) -> Iterator[str]:
    """Endless, seeded stream of training documents of ``domain`` (problems as formatted text)."""
    if domain in REASONING_DOMAINS:
        for p in problems(domain, split, seed):
            yield p.text
        return
    from . import code, general

    corpus = {"general": general.corpus, "code": code.corpus}.get(domain)
    if corpus is None:
        raise ValueError(f"unknown domain {domain!r}; domains: {', '.join(DOMAINS)}")
    docs = [d for d in corpus() if in_split(d, split)]
    if not docs:
        raise ValueError(f"domain {domain!r} has no {split} documents on this machine")
    rng = random.Random(f"{domain}/{split}/{seed}")
    while True:
        yield rng.choice(docs)
