"""Sphinx extension: read the package's docstrings as their authors wrote them -- plain maths, not reST.

The docstrings write absolute values and norms as ``|b - a|`` and file patterns as ``stages/*.json``,
which reST would take for substitution references and emphasis. Outside inline literals and literal
blocks, this escapes ``|`` and a ``*`` that follows ``/`` before autodoc parses a docstring; nothing
in the sources changes, and a docstring that uses real reST (roles, literals, ``::`` blocks) is
untouched.
"""

from __future__ import annotations

import re

LITERAL = re.compile(r"(``.+?``|:[a-z:]+:`[^`]+`|`[^`]+`_?)")


def _escape(text: str) -> str:
    out = []
    for i, piece in enumerate(LITERAL.split(text)):
        if i % 2:  # a literal or a role: as written
            out.append(piece)
        else:
            out.append(re.sub(r"(?<!\\)\|", r"\\|", piece).replace("/*", "/\\*"))
    return "".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def process(app, what, name, obj, options, lines: list[str]) -> None:
    block_indent = None  # inside a literal block (after a line ending in ``::``): its parent's indent
    doctest = False  # inside a doctest block: from ``>>>`` to the next blank line
    for i, line in enumerate(lines):
        doctest = (doctest and bool(line.strip())) or line.lstrip().startswith(">>>")
        if doctest:
            continue
        if block_indent is not None:
            if line.strip() and _indent(line) <= block_indent:
                block_indent = None
            else:
                continue
        if line.strip().startswith(("+-", "+=")):
            continue
        lines[i] = _escape(line)
        if line.rstrip().endswith("::"):
            block_indent = _indent(line)


def setup(app):
    app.connect("autodoc-process-docstring", process)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
