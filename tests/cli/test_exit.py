"""The console scripts end without the interpreter's teardown (prism_analysis.fast_exit.exit_now):
the exit status, everything printed, the atexit handlers and running threads are kept."""

import subprocess
import sys

SCRIPT = """
import atexit, sys, threading, time
from prism_analysis.fast_exit import exit_now
out = sys.argv[1]
atexit.register(lambda: open(out + ".atexit", "w").write("ran"))


class TornDown:  # collected only by the interpreter's teardown, which exit_now skips
    def __init__(self, path):
        self.path, self.open = path, open  # kept here: teardown clears the module's names first

    def __del__(self):
        self.open(self.path, "w").write("ran")


kept = TornDown(out + ".teardown")
if sys.argv[2] == "thread":  # a running non-daemon thread: the normal exit waits for it
    threading.Thread(target=lambda: (time.sleep(0.5), open(out + ".thread", "w").write("done"))).start()
print("x" * 200_000, end="")
sys.stderr.write("to stderr")
exit_now(3)
"""


def test_exit_now_keeps_the_status_the_output_and_the_atexit_handlers(tmp):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp / "f"), "plain"], capture_output=True, text=True)
    assert r.returncode == 3
    assert r.stdout == "x" * 200_000 and r.stderr == "to stderr"
    assert (tmp / "f.atexit").read_text() == "ran"
    assert not (tmp / "f.teardown").exists()  # the teardown was skipped


def test_exit_now_waits_for_a_running_thread(tmp):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp / "f"), "thread"], capture_output=True, text=True)
    assert r.returncode == 3 and len(r.stdout) == 200_000
    assert (tmp / "f.thread").read_text() == "done" and (tmp / "f.atexit").read_text() == "ran"
    assert (tmp / "f.teardown").read_text() == "ran"  # the normal exit


def test_the_prism_script_is_the_console_entry_point():
    import re
    from pathlib import Path

    import prism_cli

    root = Path(prism_cli.__file__).parents[1]
    scripts = re.search(r"\[project\.scripts\]\n(.*?)\n\n", (root / "pyproject.toml").read_text(), re.S).group(1)
    assert 'prism = "prism_cli:console"' in scripts.splitlines()
    for module in ("prism_cli/__main__.py", "prism_analysis/cli/__main__.py"):
        text = (root / module).read_text()
        assert "console()" in text or "exit_now(" in text, module
