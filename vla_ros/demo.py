"""`make demo`: the default LIBERO episode through the ROS graph."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("make demo: not available yet - the demo needs sim_bridge, vla_policy_node and the launch "
          "runner (issue 6), which are not built yet.", file=sys.stderr)
    return 2
