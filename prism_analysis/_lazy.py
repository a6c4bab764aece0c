"""PEP 562 lazy exports: a package names its public API without importing it (torch loads on use)."""

from __future__ import annotations

import importlib


def exports(package: str, table: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for ``package`` whose ``table`` maps a public name to the
    submodule (relative to ``package``) that defines it."""

    def __getattr__(name: str):
        if name in table:
            return getattr(importlib.import_module(f"{package}.{table[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(table) | set(vars(importlib.import_module(package))))

    return __getattr__, __dir__
