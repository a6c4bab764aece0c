"""How users name a checkpoint with an adapter: ``BASE+ADAPTER`` (a path, ``+``, a PEFT adapter folder).

Plain path logic (no torch), shared by the readers (:mod:`prism_analysis.checkpoints.lora`) and by
the output guard (:mod:`prism_analysis.outputs`, which must know both halves are inputs).
"""

from __future__ import annotations

import os

from .errors import PrismError

ADAPTER_CONFIG = "adapter_config.json"


def split_reference(source: str | os.PathLike) -> tuple[str, str] | None:
    """``(BASE, ADAPTER)`` when ``source`` reads ``BASE+ADAPTER`` -- BASE an existing path, ADAPTER a
    directory with ``adapter_config.json`` -- else None. A path that exists as a whole is never split;
    a ``+`` that splits two ways is an error."""
    text = os.fspath(source)
    if "+" not in text or os.path.exists(text):
        return None
    splits = [(text[:i], text[i + 1 :]) for i, c in enumerate(text) if c == "+"]
    splits = [(b, a) for b, a in splits if b and a and os.path.exists(b) and os.path.isdir(a)]
    found = [(b, a) for b, a in splits if os.path.isfile(os.path.join(a, ADAPTER_CONFIG))]
    if len(found) > 1:
        raise PrismError(f"ambiguous BASE+ADAPTER: {' or '.join(f'{b!r} + {a!r}' for b, a in found)}", text)
    if not found and splits:
        raise PrismError(f"not a PEFT adapter directory (no {ADAPTER_CONFIG})", splits[0][1])
    return found[0] if found else None
