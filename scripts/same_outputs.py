"""Run every analysis command on fixed fixtures (and the smoke study) with one source tree.

Used to prove a refactor changes no output: run it with the tree before and the tree after, then
compare the two output folders byte for byte::

    python scripts/same_outputs.py fixtures /tmp/fx                       # once: the fixtures
    PYTHONPATH=OLD python scripts/same_outputs.py run /tmp/fx /tmp/out && mv /tmp/out /tmp/before
    PYTHONPATH=NEW python scripts/same_outputs.py run /tmp/fx /tmp/out && mv /tmp/out /tmp/after
    python scripts/same_outputs.py diff /tmp/before /tmp/after

Run both into the same folder (moved away after each run): the study hashes its configuration,
paths included.

``diff`` compares every file byte for byte and prints the ones that differ. Outputs that name their
own folder are compared with that folder's path replaced; JSON keys that hold wall times or dates,
the study report's stage-time rows and run lock files (a process id) are left out.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import subprocess
import sys
from pathlib import Path

#: Keys whose values are wall-clock times or dates: left out of the comparison.
VOLATILE = ("seconds", "time", "timing", "elapsed", "created", "started", "finished", "duration", "date", "pid", "host")


def fixtures(root: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import PROSE, save_model

    root.mkdir(parents=True, exist_ok=True)
    for name, seed, perturb in [("a", 0, 0.0), ("b", 0, 0.01), ("c", 0, 0.02), ("d", 0, 0.05)]:
        save_model(root / name, seed=seed, perturb=perturb)
    (root / "probe.txt").write_text("\n".join(dict.fromkeys(PROSE)) + "\n")


def run(fx: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH="0")
    prism = [sys.executable, "-m", "prism_cli"]
    commands = {
        "audit": ["audit", fx / "a", fx / "b", "--spectral"],
        "cka": ["cka", fx / "a", fx / "b", "--probe", fx / "probe.txt", "--bootstrap", "5", "--n", "6"],
        "trajectory": ["trajectory", fx / "a", fx / "b", fx / "c", fx / "d"],
        "compare": ["compare", fx / "a", fx / "b", fx / "a", fx / "c"],
        "interpolate": ["interpolate", fx / "a", fx / "b", fx / "c", "--a", "0.5", "--b", "0.5"],
    }
    for name, args in commands.items():
        r = subprocess.run(
            [*prism, *map(str, args), "--out", str(out / name), "--quiet"], env=env, text=True, capture_output=True
        )
        (out / f"{name}.stdout").write_text(r.stdout + f"\nexit {r.returncode}\n" + r.stderr)
    r = subprocess.run(
        [*prism, "reproduce", "--preset", "smoke", "--out", str(out / "study"), "--quiet"],
        env=env,
        text=True,
        capture_output=True,
    )
    (out / "study.stdout").write_text(f"exit {r.returncode}\n" + r.stderr)


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not any(w in k.lower() for w in VOLATILE)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


#: Files that hold a process id or wall times only: present on both sides, contents not compared.
UNCOMPARED = (".prism-run.lock",)
#: Rows of the study report's stage-time table (wall seconds).
STAGE_ROW = re.compile(r"^(\| (pretrain|mid|rl|eval|analyse) \|.*|Total of the stages listed: .*)$", re.M)


def _text(path: Path, root: Path) -> str:
    """A text file with its output root replaced (outputs name their own paths)."""
    return path.read_text().replace(str(root), "<OUT>")


def same(a: Path, b: Path, root_a: Path, root_b: Path) -> bool:
    if filecmp.cmp(a, b, shallow=False) or a.name in UNCOMPARED:
        return True
    try:
        ta, tb = _text(a, root_a), _text(b, root_b)
    except UnicodeDecodeError:
        return False  # binary and different
    if a.suffix == ".json":
        try:
            ja, jb = _strip(json.loads(ta)), _strip(json.loads(tb))
        except ValueError:
            return False
        if a.parent.name == "stages":  # the study's stage records: seconds per job
            ja.pop("jobs", None), jb.pop("jobs", None)
        try:
            return ja == jb
        except ValueError:
            return False
    if a.suffix == ".md":
        ta, tb = STAGE_ROW.sub("", ta), STAGE_ROW.sub("", tb)
    return ta == tb


def diff(a: Path, b: Path) -> int:
    fa = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    bad = sorted(fa ^ fb)
    for p in sorted(fa ^ fb):
        print(f"only in {'before' if p in fa else 'after'}: {p}")
    differ = [p for p in sorted(fa & fb) if not same(a / p, b / p, a, b)]
    for p in differ:
        print(f"differs: {p}")
    print(f"{len(fa & fb) - len(differ)} of {len(fa | fb)} files identical")
    return 1 if bad or differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["fixtures", "run", "diff"])
    ap.add_argument("paths", nargs="+", type=Path)
    args = ap.parse_args()
    if args.what == "fixtures":
        fixtures(args.paths[0])
    elif args.what == "run":
        run(*args.paths)
    else:
        return diff(*args.paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
