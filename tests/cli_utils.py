"""Driving `bench` in-process through click's CliRunner, and checking its one-line errors."""

from click.testing import CliRunner

from genbench.bench.commands.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, code: int) -> str:
    """The single "Error: ..." line of a failed command, after checking the exit code and that no
    traceback was printed."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]
