"""Adaptive CPU threads: the count follows the cores other processes leave free, a forced count or
the environment's wins, a resumed run keeps its recorded count, and config.json records the choice."""

from __future__ import annotations

import json

import pytest
import torch
from cli_utils import invoke

from genbench.bench.engine import threads
from genbench.bench.execute import run as runs
from genbench.bench.planning.settings import RunSettings


@pytest.mark.parametrize(
    "usable,busy,expected",
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 3.0, 1), (8, 2.2, 6), (4, None, 4)],
)
def test_threads_are_the_cores_other_processes_leave(usable, busy, expected):
    assert threads.choose(usable, busy) == expected


def test_busy_cores_from_proc_stat(tmp_path):
    """/proc/stat's first line: user nice system idle iowait irq softirq steal (guest is in user)."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 100 800 20 0 0 0 7 0\ncpu0 50 0 50 400 10 0 0 0 0 0\n")
    assert threads._cpu_times(stat) == (205.0, 1025.0)
    # 300 of 400 jiffies busy on 4 cores, half a core of it ours
    assert threads.others_busy((205, 1025), (505, 1425), 0.5, 4) == pytest.approx(2.5)
    assert threads.others_busy((205, 1025), (205, 1025), 0.0, 4) is None  # no time passed
    assert threads.busy_cores(0.0, tmp_path / "missing") is None
    measured = threads.busy_cores(0.05)  # the real file, where there is one
    assert measured is None or 0 <= measured <= (threads.os.cpu_count() or 1)


def test_forced_then_environment_then_resumed_then_load(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda: 1.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.decide(forced=5, recorded=4) == threads.ThreadChoice(5, 2, 1.0, "--threads")
    assert threads.decide(recorded=4).reason == "OMP_NUM_THREADS" and threads.decide().threads == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.decide(recorded=4) == threads.ThreadChoice(4, 2, None, "resumed run")
    assert threads.decide() == threads.ThreadChoice(1, 2, 1.0, "load")
    assert threads.decide(share=2).threads == 1  # two ranks on two cores: one each, load not read


@pytest.mark.parametrize(
    "threads_,usable,busy,says",
    [(2, 2, 1.0, True), (2, 2, 0.4, False), (1, 2, 1.0, False), (3, 2, 0.0, True), (6, 8, 2.2, False),
     (7, 8, 2.2, True), (2, 2, None, False)],
)  # fmt: skip
def test_a_forced_count_above_the_free_cores_gets_one_line(threads_, usable, busy, says):
    forced = threads.ThreadChoice(threads_, usable, busy, "--threads")
    note = forced.note()
    assert (note is not None) == says
    if says:
        free = threads.choose(usable, busy)
        assert "\n" not in note and f"asks for {threads_} threads, but only {free} of {usable}" in note
    assert threads.ThreadChoice(threads_, usable, busy, "load").note() is None  # only a user's count


def test_run_says_when_forced_threads_oversubscribe(tmp_path, monkeypatch, mnist_dir):
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda: 1.0)  # one core free at the start
    before = torch.get_num_threads()
    try:
        result = invoke(
            "run", "--models", "gan", "--profile", "smoke", "--out", tmp_path, "--name", "t",
            "--max-steps", "1", "--n-samples", "32", "--allow-few-samples", "--no-progress",
            "--data-dir", mnist_dir, "--threads", "2",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        notes = [line for line in result.stderr.splitlines() if line.startswith("note: --threads")]
        assert notes == [notes[0]] and "asks for 2 threads, but only 1 of 2" in notes[0]
        assert "on cpu, 2 threads ->" in result.stderr  # it still does what it was told
        config = json.loads((tmp_path / "gan-smoke-s0-t" / "config.json").read_text())
        assert config["threads"] == {"threads": 2, "usable": 2, "busy": 1.0, "reason": "--threads"}
    finally:
        torch.set_num_threads(before)


def test_run_records_its_choice_and_resume_keeps_it(tmp_path, monkeypatch, mnist_dir):
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda: 1.2)  # another program holds a core
    before = torch.get_num_threads()
    try:
        result = invoke(
            "run", "--models", "gan", "--profile", "smoke", "--out", tmp_path, "--name", "t",
            "--max-steps", "2", "--n-samples", "32", "--allow-few-samples", "--no-progress",
            "--data-dir", mnist_dir,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "on cpu, 1 thread ->" in result.stderr
        config = json.loads((tmp_path / "gan-smoke-s0-t" / "config.json").read_text())
        assert config["threads"] == {"threads": 1, "usable": 2, "busy": 1.2, "reason": "load"}
        monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)  # idle now: the resumed run keeps 1
        assert runs._threads(RunSettings(), torch.device("cpu"), config)["threads"] == 1
        assert torch.get_num_threads() == 1
        assert runs._threads(RunSettings(), torch.device("cpu"), None)["threads"] == 2
    finally:
        torch.set_num_threads(before)
