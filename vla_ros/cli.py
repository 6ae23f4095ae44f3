"""`vla-ros`: the project's command line, for the pip environment where no `ros2` command exists.

Each sub-command lives in its own module and is imported only when used.
"""

from __future__ import annotations

import importlib
import sys

# name -> ("module" with main(argv) or "module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("vla_ros.nodes.demo", "run the default LIBERO episode through the ROS graph (make demo)"),
    "launch": ("vla_ros.launcher", "start a node graph, like `ros2 launch vla_ros <graph>.launch.py`"),
    "send": ("vla_ros.nodes.cli_tools:send_main", "publish an instruction, like `ros2 topic pub --once`"),
    "watch": ("vla_ros.nodes.cli_tools:watch_main", "print actions, policy status and episode status"),
    "enable": ("vla_ros.nodes.cli_tools:enable_main", "switch the policy's output on/off (std_srvs/SetBool)"),
    "reset": ("vla_ros.nodes.cli_tools:reset_main", "reset the simulator bridge to a task/init state"),
    "record": ("vla_ros.nodes.bag_recorder", "record camera/instruction/action topics to an MCAP bag"),
    "serve": ("vla_ros.serving", "serve a policy over HTTP (OpenVLA deploy.py protocol, POST /act)"),
    "generate-demos": ("vla_ros.sim.generate_demos", "scripted-expert demonstrations -> LIBERO-format HDF5"),
    "expert-eval": ("vla_ros.sim.expert", "the scripted expert's success on the suites' fixed init states"),
    "dataset-stats": ("vla_ros.data.statistics", "dataset_statistics.json (OpenVLA layout) of a dataset"),
    "export-compact": ("vla_ros.training.data.compact", "export a dataset to the compact form carried to a GPU"),
    "bag-to-dataset": ("vla_ros.training.data.bag_convert", "convert a recorded MCAP bag to a LIBERO-format dataset"),
    "train": ("vla_ros.training.train", "train a native VLA from scratch"),
    "finetune": ("vla_ros.training.finetune", "LoRA fine-tuning (8/4-bit base) of a checkpoint"),
    "eval": ("vla_ros.nodes.eval_client", "evaluate a checkpoint on a LIBERO suite (in-process or through ROS)"),
    "merge-policies": ("vla_ros.training.merge", "weight-average two policies of one architecture (WiSE-FT)"),
    "model-card": ("vla_ros.training.model_card",
                   "a checkpoint's README (data, commands, cost, success) from its records"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: vla-ros <command> [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<16} {text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vla-ros: unknown command {name!r}; try `vla-ros --help`", file=sys.stderr)
        return 2
    module_name, _, func = COMMANDS[name][0].partition(":")
    entry = getattr(importlib.import_module(module_name), func or "main")
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
