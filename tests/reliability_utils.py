"""Helpers of the tests/test_reliability_*.py files: `bench` in a subprocess, `bench run` in-process
on MNIST loaded once per test process, and reading a run folder back."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from pathlib import Path

import pytest
from cli_utils import invoke

from genbench.metrics import METRICS
from genbench.metrics.compute import PEAK_FLOP_RATE, TRAIN_FLOP_RATE, UTILIZATION

# The cheapest real run: the smoke GAN (30 steps: fewer draw grey images that evaluation refuses),
# the fewest samples FID with the mnist network takes (its 128 feature dimensions); --threads 1 on
# the shared cores.
FAST = ("--models", "gan", "--profile", "smoke", "--n-samples", "130", "--threads", "1")


def bench_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "genbench.bench.commands.cli", *map(str, args)]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@functools.lru_cache(maxsize=1)
def _mnist(data_dir: str):
    from genbench.bench.engine.data import load_dataset

    return load_dataset("mnist", data_dir, download_missing=False)


def preload(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """`bench run` in this process reads MNIST from memory instead of from disk each time."""
    from genbench.bench.execute import run as runs

    data = _mnist(str(mnist_dir))
    monkeypatch.setattr(runs, "load_dataset", lambda *args, **kwargs: data)
    return data


def fast_run(out: Path, name: str, *extra):
    """`bench run` of FAST in this process; returns (click result, run folder)."""
    result = invoke("run", *FAST, "--out", out, "--name", name, "--no-progress", *extra)
    return result, Path(out) / f"gan-smoke-s0-{name}"


def status(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "status.json").read_text())


def metric_values(run_dir: Path) -> dict:
    """Every number of metrics.json but timings (which vary from run to run)."""
    timing = {"train_images_per_s", "sample_images_per_s", "peak_memory_mb", "wall_time_s"}
    timing |= {o.key for o in (TRAIN_FLOP_RATE, PEAK_FLOP_RATE, UTILIZATION)}  # clock-measured too
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())["metrics"]
    return {k: v["value"] for k, v in metrics.items() if v["column"] not in timing}


# The AIS numbers (float64 sums over the chain's HMC steps) of a resumed run and an uninterrupted one
# were found to differ in the 11th digit in a process started with OMP_NUM_THREADS=2 (a run's own
# --threads 1 notwithstanding): 4116.42651631 against 4116.42651626 nats, and a BDMC gap (their
# difference with the reverse run) by 3e-6. That is rounding: one training step more or less moves
# them by whole nats. Everything else must be equal to the last bit.
AIS_KEYS = {o.key for o in METRICS["ais"].outputs}  # AIS estimates, BDMC gap
AIS_RELATIVE = 1e-9  # of the AIS log-likelihood in nats


def assert_same_numbers(got: dict, want: dict) -> None:
    """``metric_values`` of two runs equal, but for AIS rounding (``AIS_RELATIVE``)."""
    assert got.keys() == want.keys()
    exact = {k: v for k, v in got.items() if k not in AIS_KEYS}  # AIS has no sample modes
    assert exact == {k: want[k] for k in exact}
    scale = abs(want.get("ais_nats") or 0.0)
    for key in got.keys() - exact.keys():
        if got[key] is None or want[key] is None:
            assert got[key] == want[key], key
        else:
            assert math.isclose(got[key], want[key], rel_tol=AIS_RELATIVE, abs_tol=AIS_RELATIVE * scale), key
