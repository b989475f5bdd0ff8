"""Driving `bench` in-process through click's CliRunner, and checking its one-line errors."""

from click.testing import CliRunner

from genbench.bench.commands.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, code: int) -> str:
    """The single "Error: ..." line of a failed command (for exit status 130, a stop the user asked
    for, the single "Interrupted ..." line and no "Error" line), after checking the exit code and
    that no traceback was printed."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    prefix = "Interrupted" if code == 130 else "Error"
    lines = [line for line in result.output.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, result.output
    assert code != 130 or "Error" not in result.output, result.output
    return lines[0]
