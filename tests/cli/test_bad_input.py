"""Every bad input a new user might give: one line on stderr naming the file or option, exit status
2, no traceback, and the file system exactly as it was (a listing with checksums before and after).

The table below is the campaign of issue #12, case by case; each command that writes has its
`--out`-is-an-input, `--out`-contains-an-input and existing-file cases.
"""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import model_state, save_model, save_state

from prism_cli import main


def snapshot(root: Path) -> dict:
    """Every file and directory under ``root``: path -> sha256 (files) or "dir"."""
    out = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        rel = str(p.relative_to(root))
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            out[rel] = "special"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``prism ARGV`` in this process: (exit status, stderr)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse rejects an option
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A directory of inputs: checkpoints a, b (and odd ones), a run, probe and mix files."""
    w = tmp_path_factory.mktemp("world")
    save_model(w / "a", seed=0)
    save_model(w / "b", seed=0, perturb=0.01)
    save_model(w / "shallow", seed=0, num_layers=2)
    save_model(w / "small_vocab", seed=0, vocab_size=100)
    state, config = model_state("llama")
    steps = []
    for t in (0, 1, 2):
        save_state({k: v * (1 + 0.01 * t) for k, v in state.items()}, w / "run" / f"step_{t:06d}", config)
        steps.append({"step": t, "path": f"step_{t:06d}"})
    (w / "run" / "trajectory.json").write_text(json.dumps({"parent": None, "steps": steps}))
    (w / "file.txt").write_text("a file, not a directory\n")
    (w / "stranger").mkdir()
    (w / "stranger" / "notes.md").write_text("somebody's notes\n")
    (w / "probe.txt").write_text("\n".join(f"Tom has {i} apples and {i + 2} pears." for i in range(12)))
    (w / "dup.txt").write_text("the same prompt\nanother prompt\nthe same prompt\nfourth prompt\n")
    (w / "two.txt").write_text("one prompt\ntwo prompts\n")
    (w / "inf_mix.json").write_text('{"domains": {"math": 1e999}}')
    (w / "list_index").mkdir()
    (w / "list_index" / "model.safetensors.index.json").write_text('{"weight_map": ["not", "a", "map"]}')
    (w / "list_config").mkdir()
    save_state({"w": torch.ones(3)}, w / "list_config")
    (w / "list_config" / "config.json").write_text("[1, 2, 3]")
    (w / "empty_dir").mkdir()
    os.mkfifo(w / "fifo.safetensors")
    (w / "with_readme").mkdir()
    (w / "with_readme" / "README.md").write_text("my project\n")
    (w / "with_readme" / "report.md").write_text("my own report\n")
    return w


A, B = "{w}/a", "{w}/b"
CASES = [
    # -- audit -------------------------------------------------------------------------------------
    ("audit --out an input", ["audit", A, B, "--out", A], "over an input"),
    ("audit --out holds the inputs", ["audit", A, B, "--out", "{w}"], "over an input"),
    ("audit --out an existing file", ["audit", A, B, "--out", "{w}/file.txt"], "not a directory"),
    ("audit --out a stranger's dir", ["audit", A, B, "--out", "{w}/stranger"], "not written by 'prism audit'"),
    ("audit --out empty", ["audit", A, B, "--out", ""], "--out"),
    ("audit --out /", ["audit", A, B, "--out", "/"], "this directory itself"),
    ("audit --thresholds nan", ["audit", A, B, "--thresholds", "nan"], "--thresholds"),
    ("audit --thresholds -1%", ["audit", A, B, "--thresholds", "-1%"], "--thresholds"),
    ("audit --device garbage", ["audit", A, B, "--device", "garbage"], "--device"),
    ("audit --device meta", ["audit", A, B, "--device", "meta"], "--device meta"),
    ("audit index with a list", ["audit", A, "{w}/list_index"], "list_index"),
    ("audit config.json a list", ["audit", A, "{w}/list_config"], "config.json"),
    ("audit a FIFO", ["audit", A, "{w}/fifo.safetensors"], "not a regular file"),
    ("audit an empty dir", ["audit", A, "{w}/empty_dir"], "empty_dir"),
    ("audit a missing path", ["audit", A, "{w}/nowhere"], "nowhere"),
    # -- trajectory --------------------------------------------------------------------------------
    ("trajectory --out the run", ["trajectory", "{w}/run", "--out", "{w}/run"], "over an input"),
    ("trajectory --out holds the run", ["trajectory", "{w}/run", "--out", "{w}"], "over an input"),
    ("trajectory --tau -1", ["trajectory", "{w}/run", "--tau", "-1"], "--tau"),
    ("trajectory --tau nan", ["trajectory", "{w}/run", "--tau", "nan"], "--tau"),
    ("trajectory --out a file", ["trajectory", "{w}/run", "--out", "{w}/file.txt"], "not a directory"),
    # -- compare -----------------------------------------------------------------------------------
    ("compare --out an input", ["compare", A, B, A, B, "--out", B], "over an input"),
    ("compare --out a file", ["compare", A, B, A, B, "--out", "{w}/file.txt"], "not a directory"),
    # -- interpolate -------------------------------------------------------------------------------
    ("interpolate --a nan", ["interpolate", A, B, B, "--a", "nan", "--b", "0", "--out", "{w}/i"], "--a"),
    ("interpolate --a inf", ["interpolate", A, B, B, "--a", "inf", "--b", "0", "--out", "{w}/i"], "--a"),
    ("interpolate --b 1e300", ["interpolate", A, B, B, "--a", "1", "--b", "1e300", "--out", "{w}/i"], "--b"),
    ("interpolate other depth", ["interpolate", "{w}/shallow", A, B, "--a", "1", "--b", "0", "--out", "{w}/i"], "a"),
    ("interpolate --out an input", ["interpolate", A, B, B, "--a", "1", "--b", "0", "--out", B], "over an input"),
    ("interpolate --out a file", ["interpolate", A, B, B, "--a", "1", "--b", "0", "--out", "{w}/file.txt"], "file"),
    # -- cka ---------------------------------------------------------------------------------------
    ("cka --n 0", ["cka", A, B, "--probe", "{w}/probe.txt", "--n", "0"], "--n"),
    ("cka --n -3", ["cka", A, B, "--probe", "{w}/probe.txt", "--n", "-3"], "--n"),
    ("cka --bootstrap -1", ["cka", A, B, "--probe", "{w}/probe.txt", "--bootstrap", "-1"], "--bootstrap"),
    ("cka --sample 0", ["cka", A, B, "--probe", "{w}/probe.txt", "--sample", "0"], "--sample"),
    ("cka --batch-size 0", ["cka", A, B, "--probe", "{w}/probe.txt", "--batch-size", "0"], "--batch-size"),
    ("cka --max-length 1", ["cka", A, B, "--probe", "{w}/probe.txt", "--max-length", "1"], "--max-length"),
    ("cka --max-length 0", ["cka", A, B, "--probe", "{w}/probe.txt", "--max-length", "0"], "--max-length"),
    ("cka duplicate prompts", ["cka", A, B, "--probe", "{w}/dup.txt", "--quiet"], "repeats prompt"),
    ("cka two prompts", ["cka", A, B, "--probe", "{w}/two.txt", "--quiet"], "at least 3"),
    (
        "cka wrong tokenizer",
        ["cka", "{w}/small_vocab", "{w}/small_vocab", "--probe", "{w}/probe.txt", "--quiet", "--bootstrap", "0"],
        "tokenizer",
    ),
    ("cka --out an input", ["cka", A, B, "--probe", "{w}/probe.txt", "--out", A], "over an input"),
    ("cka --out the probe", ["cka", A, B, "--probe", "{w}/probe.txt", "--out", "{w}/probe.txt"], "probe.txt"),
    ("cka a missing probe", ["cka", A, B, "--probe", "{w}/nowhere.txt"], "nowhere.txt"),
    # -- eval --------------------------------------------------------------------------------------
    ("eval --n 0", ["eval", A, "--n", "0"], "--n"),
    ("eval --pass-k 5,2", ["eval", A, "--pass-k", "5,2"], "--pass-k"),
    ("eval --pass-k 0,2", ["eval", A, "--pass-k", "0,2"], "--pass-k"),
    ("eval --out the checkpoint", ["eval", A, "--out", A], "over an input"),
    ("eval --device cuda:99", ["eval", A, "--device", "cuda:99"], "--device"),
    # -- train -------------------------------------------------------------------------------------
    ("train --batch-size 0", ["train", "--out", "{w}/t", "--batch-size", "0"], "--batch-size"),
    ("train --seq-len 0", ["train", "--out", "{w}/t", "--seq-len", "0"], "--seq-len"),
    ("train --lr nan", ["train", "--out", "{w}/t", "--lr", "nan"], "--lr"),
    ("train --steps 0", ["train", "--out", "{w}/t", "--steps", "0"], "--steps"),
    ("train --save-every 0", ["train", "--out", "{w}/t", "--save-every", "0"], "--save-every"),
    ("train --out empty", ["train", "--out", ""], "--out"),
    ("train --out a file", ["train", "--out", "{w}/file.txt", "--steps", "1"], "not a directory"),
    ("train --out a checkpoint", ["train", "--out", A, "--steps", "1"], "holds no prism run"),
    ("train --force on a checkpoint", ["train", "--out", A, "--steps", "1", "--force"], "holds no prism run"),
    (
        "train --out holds --init",
        ["train", "--init", "{w}/run/step_000001", "--out", "{w}/run", "--steps", "1"],
        "starting point",
    ),
    ("train an infinite mix weight", ["train", "--out", "{w}/t", "--mix", "{w}/inf_mix.json"], "finite"),
    ("train --device garbage", ["train", "--out", "{w}/t", "--device", "garbage"], "--device"),
    # -- rl ----------------------------------------------------------------------------------------
    ("rl --prompts 0", ["rl", "--init", A, "--out", "{w}/r", "--prompts", "0"], "--prompts"),
    ("rl --temperature 0", ["rl", "--init", A, "--out", "{w}/r", "--temperature", "0"], "--temperature"),
    ("rl --temperature -1", ["rl", "--init", A, "--out", "{w}/r", "--temperature", "-1"], "--temperature"),
    ("rl --max-new-tokens 0", ["rl", "--init", A, "--out", "{w}/r", "--max-new-tokens", "0"], "--max-new-tokens"),
    ("rl --ppo-epochs 0", ["rl", "--init", A, "--out", "{w}/r", "--ppo-epochs", "0"], "--ppo-epochs"),
    ("rl --group-size 1", ["rl", "--init", A, "--out", "{w}/r", "--group-size", "1"], "--group-size"),
    ("rl --out the init", ["rl", "--init", A, "--out", A, "--steps", "1"], "starting point"),
    ("rl without --init", ["rl", "--out", "{w}/r"], "--init"),
    # -- figures and reproduce -----------------------------------------------------------------------
    (
        "figures without a run",
        ["figures", "--run", "{w}/nowhere", "--into", "{w}/with_readme"],
        "nowhere",
    ),
    ("reproduce --out a file", ["reproduce", "--preset", "smoke", "--out", "{w}/file.txt", "--quiet"], "file.txt"),
    (
        "reproduce --out a stranger's dir",
        ["reproduce", "--preset", "smoke", "--out", "{w}/stranger", "--quiet"],
        "not empty",
    ),
]


@pytest.mark.parametrize(("argv", "names"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, capsys, monkeypatch, argv, names):
    monkeypatch.chdir(world.parent)
    argv = [a.format(w=world) for a in argv]
    before = snapshot(world)
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prism"), err
    assert "Traceback" not in err and "error" in lines[0]
    assert names in lines[0], f"the line should name {names!r}: {lines[0]}"
    assert snapshot(world) == before, "the command changed the file system"


def test_out_dot_is_refused(world, capsys, monkeypatch):
    monkeypatch.chdir(world / "stranger")
    code, err = run_cli(["audit", str(world / "a"), str(world / "b"), "--out", "."], capsys)
    assert code == 2 and "this directory itself" in err


def test_a_previous_output_of_the_same_command_is_replaced(world, capsys, tmp):
    out = tmp / "audit"
    for _ in range(2):
        code, err = run_cli(["audit", str(world / "a"), str(world / "b"), "--out", str(out), "--quiet"], capsys)
        assert code == 0, err
    assert (out / "summary.json").is_file()
    # but not a previous output of another command
    code, err = run_cli(["trajectory", str(world / "run"), "--out", str(out), "--quiet"], capsys)
    assert code == 2 and "not written by 'prism trajectory'" in err
