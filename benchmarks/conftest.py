"""Device and precision for the timings, from the environment, and both recorded in saved runs.

GENBENCH_DEVICE     auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:1, mps
GENBENCH_PRECISION  fp32 (default) or bf16 (autocast of the training step, as `bench run --precision`)
"""

from __future__ import annotations

import os

import pytest
import torch

from genbench.bench.engine.device import PRECISIONS, resolve_device
from genbench.bench.engine.timing import device_name
from genbench.core.errors import UserError

DEVICE_VAR = "GENBENCH_DEVICE"
PRECISION_VAR = "GENBENCH_PRECISION"
SETTINGS = pytest.StashKey[tuple[torch.device, str]]()


def bench_device() -> torch.device:
    name = os.environ.get(DEVICE_VAR) or "auto"
    try:
        return resolve_device(name)
    except (UserError, RuntimeError) as exc:  # RuntimeError: not a device string at all
        raise UserError(
            f"{DEVICE_VAR}={name!r} is not usable here ({exc}); set it to cpu, cuda, mps or auto"
        ) from None


def bench_precision() -> str:
    precision = os.environ.get(PRECISION_VAR) or "fp32"
    if precision not in PRECISIONS:
        raise UserError(f"{PRECISION_VAR}={precision!r}: set it to one of {', '.join(PRECISIONS)}")
    return precision


def pytest_configure(config) -> None:
    """Read the environment once: a bad value stops the run with one line, not an error per test."""
    try:
        config.stash[SETTINGS] = (bench_device(), bench_precision())
    except UserError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    return pytestconfig.stash[SETTINGS][0]


@pytest.fixture(scope="session")
def precision(pytestconfig) -> str:
    return pytestconfig.stash[SETTINGS][1]


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    """Saved runs (--benchmark-autosave) say what they ran on; --benchmark-compare warns when the
    run it compares with differs in any of it."""
    device, precision = config.stash[SETTINGS]
    machine_info["genbench"] = {
        "device": str(device),
        "device_name": device_name(device),
        "precision": precision,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
