"""`vla-ros`: every listed command exists and answers --help; unknown commands fail clearly."""

from __future__ import annotations

import pytest

from vla_ros.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"record"}))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_record_command_is_the_bag_recorder():
    # the recorder takes ROS arguments (--ros-args -p output:=...), not argparse options
    from vla_ros.nodes import bag_recorder

    assert COMMANDS["record"][0] == bag_recorder.__name__ and callable(bag_recorder.main)


def test_unknown_and_missing_commands(capsys):
    assert main(["teleport"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--help"]) == 0
