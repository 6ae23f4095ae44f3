"""The ROS-install route: colcon (from PyPI) builds vla_ros and vla_ros_msgs against the ROS wheels."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

VENV = Path(sys.executable).parent.parent


@pytest.mark.slow
@pytest.mark.ros
def test_colcon_build_install_tree(tmp_path):
    colcon = shutil.which("colcon") or str(VENV / "bin" / "colcon")
    if not Path(colcon).exists():
        pytest.skip("colcon is not installed (dev extra)")
    src = tmp_path / "src" / "vla_ros"
    # a clean copy, as a user's workspace would hold it (no venv, no build dirs)
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", "build", "install", "log", ".git",
                                                              "data", "runs", "__pycache__", "*.egg-info"))
    env = {**os.environ, "AMENT_PREFIX_PATH": str(VENV), "CMAKE_PREFIX_PATH": str(VENV),
           "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}", "PYTHONNOUSERSITE": "1"}
    # colcon does not descend into a folder that is itself a package: name both base paths.
    res = subprocess.run(
        [colcon, "build", "--base-paths", str(src), str(src / "vla_ros_msgs"),
         "--cmake-args", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    inst = tmp_path / "install"
    share = inst / "vla_ros" / "share" / "vla_ros"
    assert (share / "package.xml").is_file()
    for launch_file in (REPO / "launch").glob("*.launch.py"):
        assert (share / "launch" / launch_file.name).is_file(), launch_file.name
    assert (share / "config" / "topics.yaml").is_file()
    assert (inst / "vla_ros" / "share" / "ament_index" / "resource_index" / "packages" / "vla_ros").is_file()
    # where `ros2 run` / launch_ros look for a package's executables
    for exe in ("vla_policy_node", "sim_bridge_node", "vla_bag_recorder"):
        assert (inst / "vla_ros" / "lib" / "vla_ros" / exe).is_file(), exe
    assert (inst / "vla_ros_msgs" / "share" / "vla_ros_msgs" / "msg" / "VlaAction.msg").is_file()
    # vla_ros_msgs importable from the install space, not from the venv's own copy
    site = next((inst / "vla_ros_msgs" / "lib").glob("python3*/site-packages"))
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); import vla_ros_msgs.msg as m; print(m.__file__)",
         str(site)],
        env={**env, "LD_LIBRARY_PATH": f"{inst / 'vla_ros_msgs' / 'lib'}:{VENV / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}"},
        capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert str(site) in probe.stdout
    # the installed vla_ros (not the source tree) finds its config in share/ and resolves the graphs the
    # launch files start: everything of `ros2 launch vla_ros libero_sim.launch.py` but the launch package
    vla_site = next((inst / "vla_ros" / "lib").glob("python3*/site-packages"))
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); import vla_ros.graph as g; "
         # sim_bridge/ and training/ install under the project's name (setup.py's package_dir)
         "import vla_ros.sim.libero_env, vla_ros.training.eval_report, vla_ros.data.results; "
         "assert vla_ros.sim.libero_env.__file__.startswith(sys.argv[1]), vla_ros.sim.libero_env.__file__; "
         "assert vla_ros.training.eval_report.__file__.startswith(sys.argv[1]); "
         "nodes = g.resolve_graph(g.load_graph('libero_sim'), {}); "
         "print(g.__file__); print(*[f for n in nodes for f in n.params_files], sep='\\n')",
         str(vla_site)],
        env={**env, "AMENT_PREFIX_PATH": f"{inst / 'vla_ros'}:{VENV}", "VLA_ROS_CONFIG_DIR": ""},
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.split()
    assert lines[0].startswith(str(vla_site))
    assert all(line.startswith(str(share / "config")) for line in lines[1:]) and len(lines) == 3
