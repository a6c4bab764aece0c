"""The shape of the code: packages depend one way, no import circles, every imported name exists.

Read from the source with ``ast`` (imports inside functions included, since a lazy import is still
a dependency), so a stale ``from .module import name`` fails here, not on a user's machine.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGES = ("prism_analysis", "prism_train", "prism_cli")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            rel = f.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


MODULES = modules()


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) of every import in ``module``'s source."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, path.name == "__init__.py")
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (target, a.name, node.lineno))
    return [(m, n, line) for m, n, line in out if m.split(".")[0] in PACKAGES]


def top_level_names(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                    names.add(sub.name)
                elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                    names |= {(a.asname or a.name).split(".")[0] for a in sub.names}
    return names


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports(m) if t in MODULES and t != m} for m in MODULES}


def test_analysis_never_imports_training_or_the_entry_point():
    bad = [
        f"{m}:{line} imports {t}"
        for m in MODULES
        if m.startswith("prism_analysis")
        for t, _, line in imports(m)
        if t.startswith(("prism_train", "prism_cli"))
    ]
    assert not bad


def test_no_import_circle_anywhere():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(g[m]):
            if t.startswith(m + ".") or m.startswith(t + "."):
                continue  # a package and its own modules
            if state.get(t) == 1:
                cycles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles


def test_every_imported_name_exists():
    missing = []
    for m in MODULES:
        for target, name, line in imports(m):
            if name is None or target not in MODULES:
                continue
            if name not in top_level_names(target):
                missing.append(f"{m}:{line}: {target} has no {name!r}")
    assert not missing


def test_no_module_shadows_the_standard_library():
    shadowing = [m for m in MODULES if m.rsplit(".", 1)[-1] in sys.stdlib_module_names]
    assert not shadowing


#: prism_analysis's subpackages and the subpackages each may import (besides the top-level modules).
#: Data flows one way: checkpoints -> weights | representations -> tracking -> cli.
LAYERS = {
    "checkpoints": set(),
    "weights": {"checkpoints"},
    "representations": {"checkpoints"},
    "tracking": {"checkpoints", "weights", "representations"},
    "cli": {"checkpoints", "weights", "representations", "tracking"},
}


def _layer(module: str) -> str | None:
    """The subpackage of a prism_analysis module (None for a top-level module)."""
    parts = module.split(".")
    if parts[0] != "prism_analysis" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def test_every_subpackage_is_declared_in_the_layer_rules():
    found = {m.split(".")[1] for m in MODULES if m.startswith("prism_analysis.") and (MODULES[m].name == "__init__.py")}
    assert found == set(LAYERS)


def test_subpackages_import_only_the_layers_below_them():
    """No arrow back up: checkpoints imports none of weights, representations, tracking, cli;
    representations does not import weights (nor weights representations); only cli imports tracking."""
    bad = []
    for m in MODULES:
        src = _layer(m)
        if src is None:
            continue
        for t, _, line in imports(m):
            dst = _layer(t)
            if dst is not None and dst != src and dst not in LAYERS[src]:
                bad.append(f"{m}:{line} imports {t} ({src} may import {sorted(LAYERS[src]) or 'no subpackage'})")
    assert not bad


def test_top_level_modules_import_no_subpackage():
    """The shared top-level modules (metrics, components, errors, outputs, ...) sit below every
    subpackage: none of them imports one (the package __init__ only names them, lazily)."""
    bad = [
        f"{m}:{line} imports {t}"
        for m in MODULES
        if m.startswith("prism_analysis.") and _layer(m) is None and m.count(".") == 1
        for t, _, line in imports(m)
        if _layer(t) is not None
    ]
    assert not bad


def test_similarity_measures_are_listed_in_order_in_metrics():
    from prism_analysis.metrics import SIMILARITY_MEASURES
    from prism_analysis.representations.similarity import MEASURES

    assert tuple(MEASURES) == SIMILARITY_MEASURES


@pytest.mark.parametrize("package", ["prism_analysis", "prism_analysis.cli.commands"])
def test_analysis_imports_without_the_training_package(package, tmp_path):
    """prism_analysis imports (and its CLI runs) with prism_train made unimportable."""
    blocker = tmp_path / "prism_train"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('prism_train is not installed')\n")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import {package}; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_old_module_paths_are_aliases_of_the_new_modules():
    """0.1's paths import the very module at the new path; all but prism_analysis.cka warn."""
    code = (
        "import warnings, importlib\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import prism_analysis.cka as old, prism_analysis.representations.cka as new\n"
        "    assert old is new and not [x for x in w if 'moved' in str(x.message)], w\n"
        "    import prism_analysis.hub as h, prism_analysis.checkpoints.hub as h2\n"
        "    assert h is h2 and h.__spec__.name == 'prism_analysis.checkpoints.hub'\n"
        "    assert any('prism_analysis.hub moved to prism_analysis.checkpoints.hub' in str(x.message) for x in w)\n"
        "    from prism_analysis.checkpoint_reader import open_checkpoint\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
