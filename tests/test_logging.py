"""Progress and info lines go through `logging`: `bench` shows them on stderr (-q: not, -v: debug too),
a program calling the API is not printed at; the command's own output stays on stdout."""

import logging
import sys

from cli_utils import invoke
from conftest import LIGHT

from genbench.bench.execute import run as runs
from genbench.bench.planning import plan as plans
from genbench.bench.planning.settings import RunSettings

STARTS = "vae seed 0 (smoke) on cpu"  # the info line of a run that starts
PROGRESS = "evaluation: likelihood, 64 images"  # a progress line (stderr is not a terminal here)


def _bench_run(out, *group_options):
    sets = [a for s in LIGHT for a in ("--set", s)]
    return invoke(*group_options, "run", "--models", "vae", "--profile", "smoke", "--device", "cpu",
                  "--threads", "1", "--out", out, *sets)  # fmt: skip


def test_info_lines_go_to_stderr_and_q_silences_them_but_not_the_result(tmp_path, fake_loading):
    shown = _bench_run(tmp_path / "a")
    assert shown.exit_code == 0, shown.output
    assert STARTS in shown.stderr and PROGRESS in shown.stderr and "vae s0: step" in shown.stderr
    assert STARTS not in shown.stdout and "Bits/dim" in shown.stdout  # the result line is output
    quiet = _bench_run(tmp_path / "b", "-q")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and "Bits/dim" in quiet.stdout
    verbose = invoke("-v", "run", "--models", "vae", "--profile", "smoke", "--set", "train.lr=0.01",
                     "--dry-run")  # fmt: skip
    assert verbose.exit_code == 0 and verbose.stdout.startswith("[")
    assert "planned vae seed 0 (smoke, mnist), --set {'train.lr': 0.01}" in verbose.stderr
    assert "planned" not in invoke("run", "--models", "vae", "--profile", "smoke", "--dry-run").stderr
    genbench = logging.getLogger("genbench")  # each command restores it as it was
    assert genbench.level == logging.NOTSET and genbench.propagate
    assert all(isinstance(h, logging.NullHandler) for h in genbench.handlers)


def test_a_program_calling_the_api_is_not_printed_at(tmp_path, fake_loading, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # as on a terminal: bars, not lines
    settings = RunSettings(device="cpu", threads=1, sets=LIGHT)
    request = plans.RunRequest(models=("vae",), profile="smoke", settings=settings, out=tmp_path)
    assert request.progress  # progress asked for, but the program has not configured logging
    (report,) = runs.run_all(request)
    assert report["metrics"]["bpd"]["value"] > 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_a_program_that_configures_logging_gets_the_lines(tmp_path, fake_loading, caplog):
    settings = RunSettings(device="cpu", threads=1, sets=LIGHT)
    request = plans.RunRequest(models=("vae",), profile="smoke", settings=settings, out=tmp_path)
    with caplog.at_level(logging.INFO, logger="genbench"):
        runs.run_all(request)
    assert any(STARTS in m for m in caplog.messages) and PROGRESS in caplog.messages
