"""Never lose a user's data: exports, forced restarts, concurrent runs, crashes mid-replace, full
disks and unreadable files. Each test reproduces what a user would do, through the real command."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, save_model

from prism_analysis.errors import PrismError
from prism_cli import main
from prism_train.config import TrainConfig
from prism_train.lm import train

SMALL = dict(steps=4, save_every=2, batch_size=2, seq_len=32, warmup=1, model={"hidden_size": 64, "num_layers": 2})


def run_cli(argv, capsys):
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    w = tmp_path_factory.mktemp("pair")
    return save_model(w / "a", seed=0), save_model(w / "b", seed=0, perturb=0.01)


# -- prism figures --------------------------------------------------------------------------------
def test_figures_export_replaces_only_what_it_wrote(tmp, capsys, monkeypatch):
    into = tmp / "docs"
    into.mkdir()
    (into / "README.md").write_text("my project\n")
    (into / "notes.png").write_bytes(b"my own picture")
    monkeypatch.chdir(into)  # --into the current directory, beside its README
    code, err = run_cli(["figures", "--run", ROOT / "figures" / "run", "--into", "."], capsys)
    assert code == 0, err
    assert (into / "README.md").read_text() == "my project\n" and (into / "notes.png").read_bytes() == b"my own picture"
    assert (into / "report.md").is_file() and (into / "F16_rl_trajectory.png").is_file()
    manifest = json.loads((into / ".prism-figures.json").read_text())
    assert "README.md" not in manifest["files"] and "report.md" in manifest["files"]
    # a figure an earlier export wrote, and that this one no longer writes, goes; nothing else does
    (into / "F99_old.png").write_bytes(b"old figure")
    manifest["files"].append("F99_old.png")
    (into / ".prism-figures.json").write_text(json.dumps(manifest))
    code, err = run_cli(["figures", "--into", into], capsys)  # from INTO/run, as in a fresh clone
    assert code == 0, err
    assert not (into / "F99_old.png").exists() and (into / "README.md").is_file() and (into / "notes.png").is_file()


def test_figures_export_refuses_to_overwrite_a_strangers_file(tmp, capsys):
    into = tmp / "docs"
    into.mkdir()
    (into / "report.md").write_text("my own report\n")
    code, err = run_cli(["figures", "--run", ROOT / "figures" / "run", "--into", into], capsys)
    assert code == 2 and "report.md" in err and "did not write" in err
    assert (into / "report.md").read_text() == "my own report\n" and sorted(os.listdir(into)) == ["report.md"]


# -- prism train --force and concurrent runs -------------------------------------------------------
def test_force_resets_only_what_the_run_wrote(tmp):
    train(TrainConfig(**SMALL), tmp / "r", progress=False)
    (tmp / "r" / "my_notes.txt").write_text("keep me")
    with pytest.raises(Exception, match="different configuration"):
        train(TrainConfig(**{**SMALL, "steps": 2}), tmp / "r", progress=False)
    m = train(TrainConfig(**{**SMALL, "steps": 2}), tmp / "r", progress=False, force=True)
    assert [s["step"] for s in m["steps"]] == [0, 2]
    assert (tmp / "r" / "my_notes.txt").read_text() == "keep me"
    assert not (tmp / "r" / "step_000004").exists()


def test_a_second_run_into_the_same_directory_is_refused_naming_the_first(tmp):
    args = ["train", "--steps", "400", "--save-every", "400", "--batch-size", "2", "--seq-len", "32", "--quiet"]
    first = subprocess.Popen(
        [sys.executable, "-m", "prism_cli", *args, "--out", str(tmp / "r")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp / "r" / "step_000000").is_dir():
            time.sleep(0.05)
        assert (tmp / "r" / "step_000000").is_dir(), "the first run started"
        second = subprocess.run(
            [sys.executable, "-m", "prism_cli", *args, "--lr", "0.002", "--out", str(tmp / "r")],
            capture_output=True,
            text=True,
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert second.returncode == 2
    line = second.stderr.strip()
    assert "\n" not in line and f"pid {first.pid}" in line and "prism train" in line
    # the lock died with the killed process (kill -9): no stale lock, the directory is a plain run again
    again = subprocess.run(
        [sys.executable, "-m", "prism_cli", *args, "--lr", "0.002", "--out", str(tmp / "r")],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and "different configuration" in again.stderr, again.stderr


# -- a crash between the two renames of a replace ----------------------------------------------------
def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_crash_mid_replace_is_repaired_on_the_next_run(pair, tmp, capsys):
    a, b = pair
    out = tmp / "audit"
    assert run_cli(["audit", a, b, "--out", out, "--quiet", "--no-figure"], capsys)[0] == 0
    pid = dead_pid()
    # the state a kill -9 leaves between "old output moved aside" and "new output moved in"
    os.replace(out, tmp / f".audit.old-{pid}")
    (tmp / f".audit.tmp-{pid}-abcd1234").mkdir()
    (tmp / f".audit.tmp-{pid}-abcd1234" / "half.csv").write_text("half written")
    code, err = run_cli(["audit", a, b, "--out", out, "--quiet", "--no-figure"], capsys)
    assert code == 0, err
    assert (out / "summary.json").is_file()
    assert sorted(p.name for p in tmp.iterdir()) == ["audit"], "no hidden leftovers"


def test_temporaries_of_a_live_process_are_left_alone(pair, tmp, capsys):
    a, b = pair
    mine = tmp / f".audit.tmp-{os.getpid()}-live0000"  # this process is alive: not a leftover
    mine.mkdir()
    assert run_cli(["audit", a, b, "--out", tmp / "audit", "--quiet", "--no-figure"], capsys)[0] == 0
    assert mine.is_dir()


# -- full disks and unreadable files -------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp):
    """A 600 KiB tmpfs (needs root and mount rights, as on the CI machine; skipped elsewhere)."""
    mnt = tmp / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_while_writing_an_audit(pair, tiny_disk, capsys):
    a, b = pair
    (tiny_disk / "filler").write_bytes(b"\0" * 500_000)
    code, err = run_cli(["audit", a, b, "--out", tiny_disk / "out", "--quiet"], capsys)
    assert code == 2 and "no space left" in err and "\n" not in err.strip(), err
    assert sorted(os.listdir(tiny_disk)) == ["filler"], "nothing half-written is left"


def test_disk_full_while_writing_a_training_checkpoint(tiny_disk, capsys):
    code, err = run_cli(
        ["train", "--steps", "2", "--save-every", "1", "--batch-size", "2", "--seq-len", "32", "--quiet",
         "--out", tiny_disk / "run"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "no space left" in err and "\n" not in err.strip(), err
    assert not list((tiny_disk / "run").glob(".step_*")) if (tiny_disk / "run").exists() else True


def as_user_without_privileges(cmd: list[str]) -> list[str]:
    """``cmd`` as a user the file permissions apply to: as root, without the capabilities that let
    root read and write anything (setpriv); as anyone else, unchanged."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop root's file capabilities")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]


def test_permission_denied_is_named_as_such(pair, tmp):
    a, b = pair
    shutil.copytree(b, tmp / "b")
    os.chmod(tmp / "b" / "model.safetensors", 0o000)
    cmd = [sys.executable, "-m", "prism_cli", "audit", str(a), str(tmp / "b"), "--quiet"]
    r = subprocess.run(as_user_without_privileges(cmd), capture_output=True, text=True)
    assert r.returncode == 2 and "permission denied" in r.stderr and "b/model.safetensors" in r.stderr, r.stderr
    assert "\n" not in r.stderr.strip()
    os.chmod(tmp / "b" / "model.safetensors", 0o644)
    (tmp / "ro").mkdir(mode=0o555)
    r = subprocess.run(
        as_user_without_privileges([*cmd, "--out", str(tmp / "ro" / "out")]), capture_output=True, text=True
    )
    assert r.returncode == 2 and "permission denied" in r.stderr and "\n" not in r.stderr.strip(), r.stderr
    assert os.listdir(tmp / "ro") == []


# -- resuming from a corrupt or malicious training state ---------------------------------------------------
class Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/prism_pwned",))


@pytest.mark.parametrize("kind", ["corrupt", "malicious"])
def test_a_bad_training_state_is_refused_without_running_it(tmp, capsys, kind):
    train(TrainConfig(**SMALL), tmp / "r", progress=False, stop_after=3)  # saved steps 0 and 2
    state = tmp / "r" / "step_000002" / "training_state.pt"
    if kind == "corrupt":
        state.write_bytes(state.read_bytes()[:100])
    else:
        torch.save({"step": 2, "payload": Boom()}, state)
    Path("/tmp/prism_pwned").unlink(missing_ok=True)
    with pytest.raises(PrismError, match="unreadable training state") as e:
        train(TrainConfig(**SMALL), tmp / "r", progress=False)
    assert "\n" not in str(e.value) and "training_state.pt" in str(e.value)
    assert not Path("/tmp/prism_pwned").exists(), "the pickle was never run"


def test_reproduce_force_all_deletes_only_what_the_study_wrote(tmp):
    from prism_train.study import Study

    run = tmp / "study"
    (run / "models" / "base").mkdir(parents=True)
    (run / "analysis").mkdir()
    (run / "study.json").write_text(json.dumps({"config": {"preset": "tiny"}, "config_hash": "another"}))
    (run / "my_notes.txt").write_text("keep me")
    with pytest.raises(PrismError, match="different configuration"):
        Study(run, "smoke", progress=False, log=lambda *a: None)._check_owner()
    assert (run / "models" / "base").is_dir()
    study = Study(run, "smoke", force=["all"], progress=False, log=lambda *a: None)
    study._check_owner()
    study.lock.release()
    assert (run / "my_notes.txt").read_text() == "keep me"
    assert not (run / "models").exists() and not (run / "analysis").exists()
    assert json.loads((run / "study.json").read_text())["config"]["preset"] == "smoke"
