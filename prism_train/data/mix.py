"""Data mixes: domain -> weight, plus user sources; presets mirror the paper's mid-training mixes.

A mix file (YAML or JSON)::

    name: my_mix
    domains: {general: 0.3, math: 0.4, science: 0.3}
    sources:                       # optional: real corpora plug in here
      - {path: corpus.jsonl, weight: 0.5, field: text}   # .txt (one document per blank-line block),
                                                         # .jsonl (field), .parquet (column; needs pyarrow)

Weights are shares of the mix's *text* (characters, a tokenizer-free stand-in for tokens), as the
paper's mixes are given in tokens: a domain of long documents is drawn less often than one of short
problems so that each gets its weight's share of the training tokens. Weights need not sum to 1;
they must be finite and non-negative, with a positive sum.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from prism_analysis.errors import PrismError

from . import general, python_code
from .problem import DOMAINS, REASONING_DOMAINS, in_split
from .reasoning import draw_problem

PRESETS: dict[str, dict[str, float]] = {
    # pretraining: general prose and code with a small share of reasoning text (5 % of the text:
    # math 3 %, code reasoning 1 %, science 1 %), as web corpora hold a little math; it is what lets
    # RL from the base earn an occasional reward (PRISM: RL from the base moves, but gains little)
    "pretrain": {"general": 0.57, "code": 0.38, "math": 0.03, "code_reasoning": 0.01, "science": 0.01},
    # PRISM mid-training mixes keep general data alongside the reasoning domains
    "math": {"general": 0.25, "code": 0.05, "math": 0.7},
    "math_code": {"general": 0.2, "code": 0.1, "math": 0.35, "code_reasoning": 0.35},
    "math_code_science": {"general": 0.15, "code": 0.05, "math": 0.27, "code_reasoning": 0.26, "science": 0.27},
}
ALIASES = {"mc": "math_code", "mcs": "math_code_science"}


@dataclass
class Mix:
    name: str
    domains: dict[str, float]
    sources: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "domains": self.domains, "sources": self.sources}

    def sampler(self, split: str = "train"):
        """A function rng -> one document of this mix's ``split``; a pure function of the rng state."""
        entries = [(d, w) for d, w in self.domains.items() if w > 0]
        entries += [(f"source:{i}", float(s.get("weight", 1.0))) for i, s in enumerate(self.sources)]
        names = [e[0] for e in entries]
        corpora = {
            "general": [d for d in general.corpus() if in_split(d, split)],
            "code": [d for d in python_code.corpus() if in_split(d, split)],
        }
        for i, s in enumerate(self.sources):
            docs = [d for d in _read_source(s) if in_split(d, split)]
            if not docs:
                raise PrismError(f"source has no {split} documents", s["path"])
            corpora[f"source:{i}"] = docs
        # document probability = text share / mean document length, so that text shares = weights
        weights = [w / _mean_chars(n, corpora, split) for n, w in entries]

        def sample(rng: random.Random) -> str:
            name = rng.choices(names, weights)[0]
            if name in REASONING_DOMAINS:
                return draw_problem(name, rng, split).text
            return rng.choice(corpora[name])

        return sample


def _mean_chars(name: str, corpora: dict, split: str, n: int = 400) -> float:
    """Mean document length (characters) of a corpus, or of ``n`` problems of a reasoning domain
    drawn with a fixed seed."""
    if name in REASONING_DOMAINS:
        rng = random.Random(f"length/{name}/{split}")
        return sum(len(draw_problem(name, rng, split).text) for _ in range(n)) / n
    docs = corpora[name]
    return max(1.0, sum(len(d) for d in docs) / len(docs))


def _read_source(s: dict) -> list[str]:
    path = Path(s["path"])
    if not path.is_file():
        raise PrismError("mix source not found", path)
    fld = s.get("field", "text")
    if path.suffix == ".txt":
        return [b.strip() for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]
    if path.suffix == ".jsonl":
        out = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append(str(json.loads(line)[fld]))
                except (ValueError, KeyError, TypeError):
                    raise PrismError(f"line {i} has no {fld!r} field", path) from None
        return out
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            return [str(x) for x in pd.read_parquet(path)[fld]]
        except ImportError:
            raise PrismError("reading .parquet needs pyarrow (pip install pyarrow)", path) from None
        except KeyError:
            raise PrismError(f"no column {fld!r}", path) from None
    raise PrismError("unsupported source type (use .txt, .jsonl or .parquet)", path)


def _valid_weight(w) -> bool:
    return isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0


def load_mix(spec: str) -> Mix:
    """A preset name (``pretrain``, ``math``, ``math_code``/``mc``, ``math_code_science``/``mcs``)
    or a YAML/JSON mix file. Raises :class:`PrismError` with the file and the problem."""
    name = ALIASES.get(spec, spec)
    if name in PRESETS:
        return Mix(name, dict(PRESETS[name]))
    path = Path(spec)
    if not path.is_file():
        raise PrismError(f"not a preset ({', '.join(PRESETS)}) nor a mix file", spec)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise PrismError(f"cannot parse mix file ({' '.join(str(e).split())[:200]})", path) from None
    if not isinstance(data, dict):
        raise PrismError("a mix file must be a mapping with 'domains' and/or 'sources'", path)
    domains = data.get("domains") or {}
    sources = data.get("sources") or []
    if not isinstance(domains, dict) or not isinstance(sources, list):
        raise PrismError("'domains' must be a mapping and 'sources' a list", path)
    for d, w in domains.items():
        if d not in DOMAINS:
            raise PrismError(f"unknown domain {d!r} (domains: {', '.join(DOMAINS)})", path)
        if not _valid_weight(w):
            raise PrismError(f"weight of {d!r} must be a finite, non-negative number (got {w!r})", path)
    for s in sources:
        if not isinstance(s, dict) or not isinstance(s.get("path"), str):
            raise PrismError("each source needs a 'path'", path)
        if not _valid_weight(s.get("weight", 1.0)):
            raise PrismError(f"weight of source {s['path']!r} must be a finite, non-negative number", path)
        if not Path(s["path"]).is_absolute():
            s["path"] = str(path.parent / s["path"])
        _read_source(s)  # fail now, not mid-training
    total = sum(domains.values()) + sum(float(s.get("weight", 1.0)) for s in sources)
    if total <= 0:
        raise PrismError("mix weights must sum to a positive number", path)
    return Mix(data.get("name", path.stem), {k: float(v) for k, v in domains.items()}, sources)
