"""Python: real standard-library source for next-token training, and small generated programs
("what does this print?") whose output the generator computes itself. Model output is never run."""

from __future__ import annotations

import functools
import os
import random
import sysconfig

from .problem import Problem

STDLIB_FILES = (
    "textwrap.py",
    "string.py",
    "heapq.py",
    "bisect.py",
    "fnmatch.py",
    "colorsys.py",
    "shlex.py",
    "glob.py",
    "keyword.py",
    "numbers.py",
    "queue.py",
    "sched.py",
    "calendar.py",
    "difflib.py",
    "fractions.py",
    "statistics.py",
    "copy.py",
    "operator.py",
    "random.py",
)


@functools.lru_cache(maxsize=1)
def corpus(chunk_chars: int = 1200) -> tuple[str, ...]:
    """Standard-library source, cut at blank lines into documents of about ``chunk_chars``."""
    root = sysconfig.get_paths()["stdlib"]
    docs = []
    for name in STDLIB_FILES:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        cur = ""
        for block in text.split("\n\n"):
            if len(cur) + len(block) > chunk_chars and cur:
                docs.append(cur.strip("\n"))
                cur = ""
            cur += block + "\n\n"
        if cur.strip():
            docs.append(cur.strip("\n"))
    return tuple(docs)


def make_reasoning(rng: random.Random, difficulty: int) -> Problem:
    """A straight-line program over small integers; the trace is the reasoning."""
    hi = {1: 9, 2: 20}.get(difficulty, 50)
    n_stmts = {1: 2, 2: 3}.get(difficulty, 4)
    names = rng.sample(["a", "b", "x", "y", "n", "k"], 3)
    env: dict[str, int] = {}
    lines, trace = [], []
    first = names[0]
    env[first] = rng.randint(1, hi)
    lines.append(f"{first} = {env[first]}")
    trace.append(f"{first} = {env[first]}")
    for _ in range(n_stmts - 1):
        target = rng.choice(names)
        src = rng.choice(sorted(env))
        op = rng.choice(["+", "-", "*"] if difficulty >= 2 else ["+", "-"])
        c = rng.randint(2, 4) if op == "*" else rng.randint(1, hi)
        val = {"+": env[src] + c, "-": env[src] - c, "*": env[src] * c}[op]
        lines.append(f"{target} = {src} {op} {c}")
        trace.append(f"{target} = {env[src]} {op} {c} = {val}")
        env[target] = val
    shown = rng.choice(sorted(env))
    lines.append(f"print({shown})")
    program = "\n".join(lines)
    return Problem(
        "code_reasoning", difficulty, f"What does this program print?\n{program}", "\n".join(trace), str(env[shown])
    )
