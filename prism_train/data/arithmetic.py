"""Multi-step arithmetic word problems with worked solutions (GSM8K/MATH500-like easy levels,
AIME-like hard levels). Difficulty = number of operations and size of the numbers."""

from __future__ import annotations

import random

from .problem import Problem

NAMES = ["Tom", "Ana", "Ravi", "Mia", "Leo", "Sara", "Ken", "Ivy"]
ITEMS = ["apples", "books", "coins", "pens", "cards", "shells", "stamps", "marbles"]


def make(rng: random.Random, difficulty: int) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    n_ops = {1: 1, 2: 2}.get(difficulty, 3 + (difficulty > 3))
    hi = {1: 9, 2: 20}.get(difficulty, 50)
    value = rng.randint(2, hi)
    sentences = [f"{name} has {value} {item}."]
    steps = []
    for _ in range(n_ops):
        op = rng.choice(["+", "-", "*"] if difficulty >= 3 else ["+", "-"])
        if op == "+":
            x = rng.randint(1, hi)
            sentences.append(rng.choice([f"{name} gets {x} more.", f"A friend gives {name} {x} more."]))
            new = value + x
        elif op == "-":
            if value < 2:
                x = rng.randint(1, hi)
                sentences.append(f"{name} finds {x} more.")
                op, new = "+", value + x
            else:
                x = rng.randint(1, value - 1)
                sentences.append(rng.choice([f"{name} gives away {x}.", f"{name} loses {x}."]))
                new = value - x
        else:
            x = rng.randint(2, 4)
            sentences.append(f"Then the number of {item} is multiplied by {x}.")
            new = value * x
        steps.append(f"{value} {op} {x} = {new}")
        value = new
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    return Problem("math", difficulty, question, "\n".join(steps), str(value))
