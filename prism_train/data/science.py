"""Templated physics and chemistry problems with computed numeric answers and worked solutions:
Ohm's law, electric power, uniform motion, density, molar masses from a small periodic table."""

from __future__ import annotations

import random

from .problem import Problem

MASSES = {"H": 1, "C": 12, "N": 14, "O": 16, "Na": 23, "Mg": 24, "S": 32, "Ca": 40}


def _ohm(rng, hi):
    i, r = rng.randint(1, hi), rng.randint(2, hi)
    return (
        f"A resistor of {r} ohms carries a current of {i} amperes. What is the voltage across it in volts?",
        f"V = I * R\nV = {i} * {r} = {i * r}",
        i * r,
    )


def _power(rng, hi):
    v, i = rng.randint(2, hi), rng.randint(1, hi)
    return (
        f"A device runs at {v} volts and draws {i} amperes. What is its power in watts?",
        f"P = V * I\nP = {v} * {i} = {v * i}",
        v * i,
    )


def _motion(rng, hi):
    v, t = rng.randint(2, hi), rng.randint(2, hi)
    return (
        f"A cart moves at a constant {v} meters per second for {t} seconds. How far does it go in meters?",
        f"d = v * t\nd = {v} * {t} = {v * t}",
        v * t,
    )


def _density(rng, hi):
    vol, rho = rng.randint(2, hi), rng.randint(2, hi)
    m = vol * rho
    return (
        f"A block has a mass of {m} grams and a volume of {vol} cubic centimeters. "
        f"What is its density in grams per cubic centimeter?",
        f"rho = m / V\nrho = {m} / {vol} = {rho}",
        rho,
    )


def _molar(rng, hi):
    elems = rng.sample(sorted(MASSES), 2 if hi < 20 else 3)
    counts = [rng.randint(1, 3 if hi < 20 else 4) for _ in elems]
    formula = "".join(e + (str(c) if c > 1 else "") for e, c in zip(elems, counts))
    parts = [f"{c} * {MASSES[e]} = {c * MASSES[e]}" for e, c in zip(elems, counts)]
    total = sum(c * MASSES[e] for e, c in zip(elems, counts))
    terms = " + ".join(str(c * MASSES[e]) for e, c in zip(elems, counts))
    table = ", ".join(f"{e} = {MASSES[e]}" for e in elems)
    return (
        f"Using the atomic masses {table}, what is the molar mass of {formula} in grams per mole?",
        "\n".join([*parts, f"{terms} = {total}"]),
        total,
    )


TEMPLATES = (_ohm, _power, _motion, _density, _molar)


def make(rng: random.Random, difficulty: int) -> Problem:
    hi = {1: 9, 2: 20}.get(difficulty, 60)
    q, reasoning, answer = rng.choice(TEMPLATES)(rng, hi)
    return Problem("science", difficulty, q, reasoning, str(answer))
