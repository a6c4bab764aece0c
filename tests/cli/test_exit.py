"""The console scripts end without the interpreter's teardown (prism_analysis.cli.parser.exit_now):
the exit status, everything printed, the atexit handlers and running threads are kept."""

import subprocess
import sys

SCRIPT = """
import atexit, sys, threading, time
from prism_analysis.cli.parser import exit_now
out = sys.argv[1]
atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
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


def test_exit_now_waits_for_a_running_thread(tmp):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp / "f"), "thread"], capture_output=True, text=True)
    assert r.returncode == 3 and len(r.stdout) == 200_000
    assert (tmp / "f.thread").read_text() == "done" and (tmp / "f.atexit").read_text() == "ran"


def test_console_entry_points_exit_with_the_command_status(tmp):
    for module in ("prism_cli", "prism_analysis.cli"):
        bad = subprocess.run(
            [sys.executable, "-m", module, "audit", str(tmp / "no"), str(tmp / "pe")], capture_output=True, text=True
        )
        assert bad.returncode == 2 and bad.stderr.startswith("prism: error:") and "Traceback" not in bad.stderr, module
