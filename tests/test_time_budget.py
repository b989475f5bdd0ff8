"""Equal-compute budgets: --time-budget ends training at a step boundary, records the steps reached,
and --max-steps of them repeats the run exactly."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from cli_utils import invoke, one_line_error
from conftest import fake_mnist

from genbench import models
from genbench.bench.engine.checkpoint import load_checkpoint
from genbench.bench.engine.evaluate import protocol_block
from genbench.bench.engine.train import RunOptions, Trainer
from genbench.core.schema import PROTOCOL_LABELS
from genbench.metrics.base import EVAL_PROFILES, EvalConfig, EvalContext
from genbench.models.base import TrainConfig

CPU = RunOptions(device=torch.device("cpu"), progress=False, warmup_steps=1)


def _trainer(tmp_path, **overrides) -> tuple[torch.nn.Module, Trainer]:
    torch.manual_seed(0)
    model, smoke = models.build("vae", "smoke")
    schedule = {"epochs": 50, "max_steps": None, "batch_size": 16, "checkpoint_every": 4, "log_every": 2}
    cfg = dataclasses.replace(smoke, **{**schedule, "val_images": 32, **overrides})
    return model, Trainer(model, fake_mnist(), cfg, 0, CPU, tmp_path / "last.pt", {"run": 1})


def test_budget_stops_at_the_first_step_boundary_past_it(tmp_path):
    """On a clock that advances 0.1 s a step, a 1.05 s budget ends training after step 11, with a
    checkpoint and the end-of-training validation, as the schedule's last step would."""
    model, trainer = _trainer(tmp_path, time_budget_s=1.05)
    trainer._wall_time = lambda: 0.1 * trainer.state.step
    state, summary = trainer.run()
    assert state.step == 11 < trainer.total_steps and state.finished
    assert summary["steps"] == 11 and summary["stopped_by"] == "time budget"
    assert summary["time_budget_s"] == 1.05 and summary["budget_stop_s"] == pytest.approx(1.1)
    assert [r["step"] for r in state.history if r["split"] == "val"] == [11]
    saved = load_checkpoint(tmp_path / "last.pt", {"run": 1})["state"]
    assert saved["step"] == 11 and saved["finished"] and saved["budget_stop_s"] == pytest.approx(1.1)


def test_budget_on_the_real_clock_ends_after_the_step_that_crosses_it(tmp_path):
    """Each step is followed by a look at the clock; the first that finds 0.5 s spent ends the loop.
    (Not the wall time as the next step starts: on a loaded machine fetching the batch between the
    look and the step can take the clock past the budget.)"""
    model, trainer = _trainer(tmp_path, time_budget_s=0.5)
    spent = []  # what each look at the clock after a step found
    agree = trainer._agree
    trainer._agree = lambda stop, budget=False: (r := agree(stop, budget), budget and spent.append(r[1]))[0]
    state, summary = trainer.run()
    assert 0 < state.step <= len(spent) and state.step < trainer.total_steps  # (epoch ends look too)
    assert spent[-1] and not any(spent[:-1]) and summary["budget_stop_s"] >= 0.5


def test_steps_of_a_budget_repeat_the_run_with_max_steps(tmp_path):
    """The same weights, bit for bit, and so the same likelihood numbers."""
    budgeted, trainer = _trainer(tmp_path / "a", time_budget_s=0.4)
    (tmp_path / "a").mkdir()
    steps = trainer.run()[0].step
    repeated, trainer = _trainer(tmp_path / "b", max_steps=steps)
    (tmp_path / "b").mkdir()
    state, summary = trainer.run()
    assert state.step == steps and summary["stopped_by"] == "schedule"
    for key, value in budgeted.state_dict().items():
        assert torch.equal(value, repeated.state_dict()[key]), key
    nll = []
    for model in (budgeted, repeated):
        model.eval()
        ctx = EvalContext(model, fake_mnist(), EvalConfig(n_test=32, batch_size=16), CPU.device, seed=0)
        nll.append(ctx.per_image(model.log_prob, ctx.test_images()))
    assert torch.equal(*nll)


def test_budget_is_part_of_the_protocol_and_cannot_end_a_cosine_schedule():
    data, config = fake_mnist(), dataclasses.replace(EVAL_PROFILES["smoke"], feature_networks=())
    plain = protocol_block(data, config, "quick", CPU.device, "fp32")
    budgeted = protocol_block(data, config, "quick", CPU.device, "fp32", time_budget_s=60.0)
    assert "time_budget_s" not in plain and budgeted["time_budget_s"] == 60.0
    assert {k: v for k, v in budgeted.items() if k != "time_budget_s"} == plain  # only the budget differs
    assert "time_budget_s" in PROTOCOL_LABELS
    with pytest.raises(ValueError, match="cosine"):
        TrainConfig(schedule="cosine", time_budget_s=60.0)
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(time_budget_s=0.0)


def test_time_budget_option_is_checked(tmp_path):
    assert "--time-budget" in one_line_error(invoke("run", "--time-budget", "0", "--out", tmp_path), 2)


@pytest.mark.slow
def test_bench_run_records_the_steps_and_max_steps_repeats_the_numbers(tmp_path, mnist_dir):
    """Through `bench run` on MNIST: config.json keeps the budget, metrics.json the steps (a cost entry
    the report shows) and the budget in the protocol; --max-steps of those steps gives the same
    likelihood numbers."""
    common = ["--models", "vae", "--profile", "smoke", "--data-dir", mnist_dir, "--out", tmp_path,
              "--threads", 1, "--no-progress", "--n-samples", 32, "--allow-few-samples"]  # fmt: skip
    ran = invoke("run", *common, "--max-steps", 100_000, "--time-budget", 1.5, "--name", "budget")
    assert ran.exit_code == 0, ran.output
    run = tmp_path / "vae-smoke-s0-budget"
    config = json.loads((run / "config.json").read_text())
    doc = json.loads((run / "metrics.json").read_text())
    steps = doc["metrics"]["steps"]
    assert config["train_config"]["time_budget_s"] == 1.5 and doc["protocol"]["time_budget_s"] == 1.5
    assert steps["section"] == "cost" and steps["protocol"]["stopped_by"] == "time budget"
    assert 1.5 <= steps["protocol"]["stopped_at_s"] and 0 < steps["value"] < 55_000 // 32
    assert f"--max-steps {steps['value']}" in ran.output

    again = invoke("run", *common, "--max-steps", steps["value"], "--name", "steps")
    assert again.exit_code == 0, again.output
    repeated = json.loads((tmp_path / "vae-smoke-s0-steps" / "metrics.json").read_text())["metrics"]
    assert repeated["steps"]["value"] == steps["value"]
    for key in ("nll_nats", "bpd", "iwae_nats", "recon_mse"):
        assert repeated[key]["value"] == doc["metrics"][key]["value"], key
