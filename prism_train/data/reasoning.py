"""Reasoning problems of every domain, drawn deterministically from seeded generators, and the
document stream of any domain (reasoning problems as formatted text, or prose and code corpora).

The generators: :mod:`~prism_train.data.arithmetic` (math word problems),
:mod:`~prism_train.data.python_code` ("what does this program print?") and
:mod:`~prism_train.data.science`. Each split keeps only its own items (:func:`~prism_train.data.problem.in_split`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from . import arithmetic, general, python_code, science
from .problem import DOMAINS, REASONING_DOMAINS, Problem, in_split

#: Difficulty levels drawn when none is given (easy problems twice as often).
LEVELS = (1, 1, 2, 3)


GENERATORS = {"math": arithmetic.make, "code_reasoning": python_code.make_reasoning, "science": science.make}


def generator(domain: str):
    """The problem maker of a reasoning domain: ``make(rng, difficulty) -> Problem``."""
    return GENERATORS[domain]


def problem_stream(
    domain: str, split: str = "train", seed: int = 0, difficulty: int | None = None
) -> Iterator[Problem]:
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
        for p in problem_stream(domain, split, seed):
            yield p.text
        return
    corpus = {"general": general.corpus, "code": python_code.corpus}.get(domain)
    if corpus is None:
        raise ValueError(f"unknown domain {domain!r}; domains: {', '.join(DOMAINS)}")
    docs = [d for d in corpus() if in_split(d, split)]
    if not docs:
        raise ValueError(f"domain {domain!r} has no {split} documents on this machine")
    rng = random.Random(f"{domain}/{split}/{seed}")
    while True:
        yield rng.choice(docs)
