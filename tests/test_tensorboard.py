"""`bench run --tensorboard`: the event files under <run>/tensorboard/ hold the same scalars as
history.csv (read back with tensorboard's own reader), a sample grid per validation and the config.
Skipped where the optional extra is not installed (CI installs .[dev] only); the error a user sees
without it is tested either way."""

from __future__ import annotations

import math
import sys

import pandas as pd
import pytest
import torch
from cli_utils import invoke, one_line_error
from conftest import fake_mnist

from genbench.bench.engine.train import RunOptions
from genbench.bench.execute import run as runs
from genbench.bench.planning import plan as plans
from genbench.core.files import read_json

EVAL = {"n_samples": 32, "n_test": 64, "iwae_images": 16, "allow_few_samples": True}


def test_tensorboard_scalars_are_the_history_rows(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        options = RunOptions(device=torch.device("cpu"), progress=False, tensorboard=True)
        plan = plans.plan("vae", "smoke", 0, {"epochs": 2, "log_every": 2}, EVAL)
        run_dir = runs.start(plan, options, tmp_path, name="tb")
        runs.execute(run_dir, fake_mnist(n_train=256), options, cache_dir=tmp_path / ".cache")
    finally:
        torch.set_num_threads(threads)
    assert read_json(run_dir / "config.json")["tensorboard"] is True
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    history = pd.read_csv(run_dir / "history.csv")
    expected = {
        f"{split}/{column}": rows[["step", column]].dropna()
        for split, rows in history.groupby("split")
        for column in history.columns
        if column not in ("step", "epoch", "split") and rows[column].notna().any()
    }
    assert set(events.Tags()["scalars"]) == set(expected) and {"train/loss", "val/bpd"} <= set(expected)
    for tag, rows in expected.items():
        read = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in read] == rows.step.tolist(), tag
        for (_, value), want in zip(read, rows[rows.columns[1]], strict=True):
            assert math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-12), tag  # stored as float32
    grids = events.Images("samples")
    assert [g.step for g in grids] == history.step[history.split == "val"].tolist()
    assert "config" in "".join(events.Tags()["tensors"])  # the run's config.json as text


def test_tensorboard_missing_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    result = invoke(
        "run", "--models", "vae", "--profile", "smoke", "--out", tmp_path / "out", "--tensorboard"
    )
    assert 'pip install -e ".[tensorboard]"' in one_line_error(result, 1)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
