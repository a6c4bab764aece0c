"""Real English prose available offline: the Python reference manual topics shipped with the
standard library (``pydoc_data.topics``) and the docstrings of standard-library modules."""

from __future__ import annotations

import functools
import importlib

MODULES = (
    "abc",
    "argparse",
    "bisect",
    "calendar",
    "collections",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "enum",
    "fractions",
    "functools",
    "glob",
    "heapq",
    "inspect",
    "json",
    "logging",
    "math",
    "operator",
    "os",
    "pathlib",
    "pickle",
    "queue",
    "random",
    "re",
    "shlex",
    "shutil",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "typing",
    "unittest",
    "uuid",
    "warnings",
    "weakref",
    "zipfile",
)


def _paragraphs(text: str, chunk_chars: int):
    cur = ""
    for para in text.split("\n\n"):
        para = " ".join(para.split())
        if not para:
            continue
        if len(cur) + len(para) > chunk_chars and cur:
            yield cur.strip()
            cur = ""
        cur += para + "\n\n"
    if cur.strip():
        yield cur.strip()


@functools.lru_cache(maxsize=1)
def corpus(chunk_chars: int = 1000) -> tuple[str, ...]:
    from pydoc_data.topics import topics

    docs = []
    for key in sorted(topics):
        docs.extend(_paragraphs(topics[key], chunk_chars))
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for obj in [mod, *[getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")][:40]]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200 and (obj is mod or getattr(obj, "__module__", None) == name):
                docs.extend(_paragraphs(doc, chunk_chars))
    return tuple(dict.fromkeys(docs))
