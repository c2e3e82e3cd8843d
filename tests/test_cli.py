"""The command line: every command of docs/design.md is registered."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flowproof.cli import app

DESIGN_COMMANDS = [
    ["db", "migrate"],
    ["db", "sinks"],
    ["db", "partitions"],
    ["emit"],
    ["relay"],
    ["consume"],
    ["verify"],
    ["check"],
    ["smoke"],
    ["schemas", "check"],
    ["demo"],
]


@pytest.mark.parametrize("command", DESIGN_COMMANDS, ids=" ".join)
def test_command_is_registered(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("flowproof ")
