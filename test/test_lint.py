"""ruff over the whole repo: the role the ament lint tests play in a colcon package."""

import shutil
import subprocess
import sys

from helpers import REPO


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(__import__("pathlib").Path(sys.executable).parent / "ruff")
    res = subprocess.run([ruff, "check", "--no-cache", str(REPO)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
