"""What the user sees of AIS: a smoke GAN run's metrics.json holds a finite AIS bits/dim with its
protocol and the BDMC gap, and the report's likelihood table has a GAN row."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
import torch
from conftest import fake_mnist

from genbench.bench import report
from genbench.bench.commands import scoring
from genbench.bench.engine.train import RunOptions
from genbench.bench.execute import run as runs
from genbench.bench.planning import plan as plans
from genbench.bench.report import tables
from genbench.core.errors import UsageError
from genbench.core.files import read_json
from genbench.metrics.ais import AIS_BPD, AIS_NLL, BDMC_GAP
from genbench.metrics.base import EVAL_PROFILES
from genbench.models.gan import SIGMA_GRID

CPU = RunOptions(device=torch.device("cpu"), progress=False)


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    evaluation = {"n_samples": 32, "n_test": 64, "allow_few_samples": True}
    plan = plans.plan("gan", "smoke", 0, {"epochs": 4}, evaluation)  # 30 steps: not collapsed
    run_dir = runs.start(plan, CPU, out, name="ais")
    runs.execute(run_dir, fake_mnist(n_train=256, n_val=64, n_test=256), CPU, cache_dir=out / ".cache")
    return run_dir


def test_a_gan_run_writes_an_ais_estimate_with_its_protocol(gan_run):
    metrics = read_json(gan_run / "metrics.json")["metrics"]
    bpd, nats = metrics[AIS_BPD.key], metrics[AIS_NLL.key]
    assert math.isfinite(bpd["value"]) and bpd["value"] > 0
    assert bpd["value"] == pytest.approx(nats["value"] / (784 * math.log(2)))
    assert bpd["kind"] == "estimate" and bpd["estimator"].startswith("AIS")
    protocol = bpd["protocol"]
    assert (protocol["chains"], protocol["intermediate_distributions"], protocol["leapfrog_steps"]) == (
        4,
        20,
        2,
    )
    assert protocol["n_images"] == 8 and bpd["stderr"] > 0 and nats["stderr"] > bpd["stderr"]
    assert protocol["sigma"] in SIGMA_GRID and protocol["sigma_grid"] == list(SIGMA_GRID)
    assert f"σ = {protocol['sigma']}" in protocol["observation_model"]
    gap = metrics[BDMC_GAP.key]
    assert math.isfinite(gap["value"]) and gap["protocol"]["n_images"] == 4 and gap["stderr"] > 0
    assert gap["value"] == pytest.approx(
        gap["protocol"]["reverse_log_p_nats"] - gap["protocol"]["forward_log_p_nats"]
    )


def test_the_likelihood_table_has_a_gan_row(gan_run):
    groups = tables.build_tables(report.load_results(gan_run.parent))
    csv = pd.read_csv(io.StringIO(report.render_csv(groups)))
    likelihood = csv[(csv["section"] == "likelihood") & (csv["row"] == "gan")]
    assert len(likelihood) == 1
    value = read_json(gan_run / "metrics.json")["metrics"][AIS_BPD.key]["value"]
    assert likelihood.iloc[0][f"{AIS_BPD.key}_mean"] == pytest.approx(value)
    assert likelihood.iloc[0][f"{AIS_BPD.key}_kind"] == "estimate"


def test_bench_eval_budget_options_reach_the_eval_config_and_only_a_run(tmp_path):
    config = scoring.eval_config(EVAL_PROFILES["quick"], "mnist", "quick", ais_steps=7, ais_chains=3)
    assert (config.ais_steps, config.ais_chains) == (7, 3)
    assert config.ais_images == EVAL_PROFILES["quick"].ais_images
    with pytest.raises(UsageError, match="--ais-steps, --ais-chains does not apply to --samples"):
        scoring.check_request(scoring.EvalRequest(samples=tmp_path, ais_steps=5, ais_chains=2))
