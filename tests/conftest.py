"""Shared fixtures: fake MNIST-shaped data for unit tests, the real MNIST copy where a test is about it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from genbench.bench.engine.data import MNIST_FILES, Dataset, raw_dir, resolve_data_dir

REPO = Path(__file__).resolve().parents[1]

# The runs tests start take a fixed CPU thread count, not one from the machine's load at that moment
# (bench.engine.threads), so their numbers do not depend on what else CI runs; tests/test_threads.py tests
# the adaptive choice itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config) -> None:
    """Plug-in families named in GENBENCH_PLUGINS (comma-separated package.module:ClassName specs or
    entry-point names) are registered before collection, so the tests parametrized over the
    registry cover them:
    GENBENCH_PLUGINS=mypkg.models:MyModel python -m pytest tests/test_contract.py -k mymodel"""
    from genbench.models.plugins import ENV_VAR, PluginError, load_named

    try:
        load_named(os.environ.get(ENV_VAR, ""))
    except PluginError as exc:
        raise pytest.UsageError(f"{ENV_VAR}: {exc}") from None


def real_data_dir() -> Path | None:
    """$GENBENCH_DATA, else ../shared/data beside the checkout, when it holds the MNIST files."""
    for candidate in (os.environ.get("GENBENCH_DATA"), REPO.parent / "shared" / "data", resolve_data_dir()):
        if candidate and (raw_dir(Path(candidate)) / next(iter(MNIST_FILES))).exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real MNIST not found: set GENBENCH_DATA to a folder holding MNIST/raw/")
    return found


def fake_mnist(
    n_train: int = 256, n_val: int = 64, n_test: int = 64, size: int = 28, seed: int = 0
) -> Dataset:
    """Blobby uint8 images shaped like MNIST (dark background, bright strokes), with labels."""
    g = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        low = torch.rand(n, 1, 7, 7, generator=g)
        up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        return ((up > 0.6).float() * 255).to(torch.uint8)  # (n, 1, size, size)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=g)

    return Dataset(
        images(n_train), images(n_val), images(n_test), labels(n_train), labels(n_val), labels(n_test)
    )


@pytest.fixture
def fake_data() -> Dataset:
    return fake_mnist()


# A light evaluation for runs that test plumbing, not numbers: no sample-quality networks, a tiny AIS
# (bench run --set values; tests/test_overrides.py, tests/test_logging.py).
LIGHT = ("eval.feature_networks=()", "eval.n_test=64", "eval.iwae_images=16", "eval.iwae_k=2",
         "eval.ais_images=2", "eval.ais_steps=2", "eval.bdmc_images=0")  # fmt: skip


@pytest.fixture
def fake_loading(monkeypatch):
    """`bench run` (run_all) reads a fake data set instead of MNIST."""
    from genbench.bench.execute import run

    data = fake_mnist(n_train=512, n_test=512)
    monkeypatch.setattr(run, "load_dataset", lambda *args, **kwargs: data)


@pytest.fixture(autouse=True)
def _sigint_handler_restored(request):
    """Every test starts with Python's own Ctrl-C handler, and one that leaves another behind fails.
    A suite started in the background of a non-interactive shell (`python -m pytest &`, a CI script,
    nohup) inherits SIGINT ignored, as POSIX has such jobs do, and Python keeps it ignored; the tests
    of what a Ctrl-C prints (and the `bench` subprocesses they start, which would inherit it) need it
    delivered as from a terminal."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        pytest.fail(f"{request.node.nodeid} left SIGINT's handler {after!r}", pytrace=False)
