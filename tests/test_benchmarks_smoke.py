"""The benchmark code runs and means what it says: each timed step is a full optimisation step, the
quick step uses batch 128, images/s comes from the median. One untimed call each, smoke sizes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from genbench import models
from genbench.metrics.compute import training_step_flops

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CPU = torch.device("cpu")


def _load(name: str):
    """benchmarks/ is not a package (pytest collects it by path); load its modules the same way."""
    spec = importlib.util.spec_from_file_location(f"genbench_benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


steps = _load("test_steps")
compare_loop = _load("compare_loop")


class OnceBenchmark:
    """Stands in for pytest-benchmark's fixture: runs the function once and reports a given median."""

    def __init__(self, median: float) -> None:
        self.extra_info: dict = {}
        self.stats = SimpleNamespace(stats=SimpleNamespace(median=median))
        self.calls = 0

    def __call__(self, fn):
        self.calls += 1
        return fn()

    def pedantic(self, fn, rounds: int, iterations: int, warmup_rounds: int):
        assert (rounds, iterations, warmup_rounds) == (1, 1, 0)
        self.calls += 1
        return fn()


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_timed_step_steps_every_optimizer(name):
    case = steps.step_case(name, "smoke", CPU, "fp32")
    before = [p.detach().clone() for p in case.model.parameters()]
    terms = case.fn()
    assert torch.isfinite(terms["loss"])
    assert case.optimizers and all(len(opt.state) > 0 for opt in case.optimizers.optimizers.values())
    assert any(not torch.equal(a, p) for a, p in zip(before, case.model.parameters(), strict=True))
    assert case.images == case.info["batch_size"] == models.build(name, "smoke")[1].batch_size
    assert case.info["parameters"] == case.model.num_parameters() > 0
    assert case.info["precision"] == "fp32"


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_quick_step_uses_batch_128(name):
    case = steps.step_case(name, "quick", CPU, "fp32")  # built, not run
    assert case.images == case.info["batch_size"] == 128


def test_sample_case_draws_uint8_images_in_eval_mode():
    case = steps.sample_case("gan", "smoke", CPU)
    images = case.fn()
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.uint8
    assert not case.model.training and case.info["precision"] == "fp32"


def test_measure_reports_images_per_s_from_the_median(monkeypatch):
    calls = []
    case = steps.Case(lambda: calls.append(1) or "result", 32, None, {}, {"batch_size": 32})
    bench = OnceBenchmark(median=0.5)
    assert steps.measure(bench, case) == "result"
    assert len(calls) == steps.WARMUP_CALLS + 1 and bench.calls == 1  # warm-up calls are not timed
    assert bench.extra_info == {"batch_size": 32, "images_per_s": pytest.approx(32 / 0.5)}

    monkeypatch.setattr(steps, "SLOW_CALL_S", -1.0)  # every call is "slow": one probe, one timed call
    calls.clear()
    bench = OnceBenchmark(median=2.0)
    steps.measure(bench, case)
    assert len(calls) == 2 and bench.extra_info["images_per_s"] == pytest.approx(32 / 2.0)


def test_fake_batch_looks_like_mnist():
    x = steps.fake_batch(256, (1, 28, 28), CPU)
    assert x.dtype == torch.uint8 and set(x.unique().tolist()) == {0, 255}
    assert (x > 0).float().mean() == pytest.approx(steps.INK, abs=0.01)


@pytest.mark.slow
def test_compare_loop_runs_both_ways_on_real_mnist(mnist_dir):
    plan = compare_loop.Plan(steps=2, warmup=1, batch_size=32)
    runs = compare_loop.compare(["vae", "gan"], mnist_dir, plan, CPU, repeats=1)
    assert set(runs) == {"vae", "gan", "data"}
    assert all(len(way) == 1 and way[0].images_per_s > 0 for row in runs.values() for way in row)
    # each model at its quick profile's batch size (the settings bench run uses), the data path at the plan's
    assert [runs[n][1][0].batch_size for n in ("vae", "gan", "data")] == [128, 64, 32]
    table = compare_loop.format_table(runs)
    assert "data path only" in table and "gan (quick, batch 64)" in table


def test_compare_loop_table_shows_each_way_and_their_ratios():
    """The printed ratios are genbench over plain images/s and plain over genbench CPU ms per batch,
    from the best (and least) run of each way."""
    timing = compare_loop.Timing
    runs = {
        "vae": ([timing(600.0, 300.0, 128), timing(500.0, 320.0, 128)], [timing(900.0, 200.0, 128)]),
        "data": ([timing(1000.0, 20.0, 128)], [timing(100_000.0, 0.5, 128)]),
    }
    table = compare_loop.format_table(runs).splitlines()
    line = next(x for x in table if x.startswith("vae (quick, batch 128)"))
    assert line.split()[4:10] == ["600", "900", "1.50x", "300.00", "200.00", "1.50x"]


flops_table = _load("flops_table")


def test_flops_table_rate_is_counted_flops_over_the_timed_steps(monkeypatch):
    """One untimed warm-up call, then FLOPs per step x steps over the seconds of the timed steps."""
    calls = []
    clock = iter([10.0, 14.0])
    monkeypatch.setattr(flops_table.time, "perf_counter", lambda: next(clock))
    rate = flops_table.achieved_rate(lambda: calls.append(1), 1000, 8, CPU)
    assert rate == 1000 * 8 / 4.0 and len(calls) == 9


def test_flops_table_rows_hold_the_counts_a_run_records():
    row = flops_table.measure("gan", "smoke", 1, CPU, peak=1e15)
    model, cfg = models.build("gan", "smoke")
    assert row.batch_size == cfg.batch_size
    assert (
        row.flops_per_step
        == training_step_flops(model, flops_table.fake_batch(cfg.batch_size, (1, 28, 28), CPU))[0]
    )
    assert set(row.flops_per_sample) == set(model.sample_modes()) and row.flops_per_likelihood_image is None
    assert row.utilization == row.flops_per_s / 1e15 > 0
    text = flops_table.main(["--models", "gan", "--profile", "smoke", "--steps", "1"])
    line = next(x for x in text.splitlines() if x.startswith("| gan"))
    assert f"{row.flops_per_step:.3g}" in line and "n/a" in line and "%" in line


def test_sharing_rates_count_the_steps_inside_each_window():
    """A run's images/s beside another: the steps that ended inside the window, from the end of the
    step before it (128 images a step)."""
    load = _load("threads_under_load")
    ends = [1.0, 2.0, 3.0, 3.5, 4.0, 4.5, 6.0]
    assert load._rate(ends, 0.0, 2.5) == 2 * 128 / 2.0  # alone: from its start to the second step
    assert load._rate(ends, 2.5, 4.5) == 4 * 128 / (4.5 - 2.0)
    assert load._rate(ends, 6.5, 7.0) != load._rate(ends, 6.5, 7.0)  # no step inside: nan
