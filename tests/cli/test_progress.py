"""Progress bars stay readable in logs: when stderr is not a terminal they are written rarely."""

import subprocess
import sys

SCRIPT = """
import time
from prism_analysis.progress import progress_bar
for _ in progress_bar(range(150), desc="work"):
    time.sleep(0.01)
"""


def writes(stderr: str) -> int:
    return stderr.count("\r") + stderr.count("\n")


def test_a_log_gets_a_few_lines_not_one_per_update():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)  # stderr: a pipe
    assert r.returncode == 0
    assert "150/150" in r.stderr, "the final state is written"
    assert writes(r.stderr) <= 4, r.stderr


def test_plain_tqdm_would_flood_the_same_log():
    """The comparison that makes the test above meaningful: tqdm's default writes ~10 lines a second."""
    plain = SCRIPT.replace("from prism_analysis.progress import progress_bar", "from tqdm import tqdm as progress_bar")
    r = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True)
    assert writes(r.stderr) > 8
