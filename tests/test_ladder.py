"""The compute ladder (`bench run --compute 2e13,6e13,2e14`): one training evaluated at each rung's
step ceil(rung / FLOPs per step), rungs that survive a kill and resume, metrics.json's "ladder",
the report's quality-against-compute CSV and its best family at each rung.

Tiny smoke VAEs on fake data; the rungs are set in multiples of the counted FLOPs per step so that
the expected steps are known."""

from __future__ import annotations

import dataclasses
import math
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_utils import invoke, one_line_error
from conftest import fake_mnist
from test_report import real_run

from genbench import models
from genbench.bench import report
from genbench.bench.engine.budget import count_step
from genbench.bench.engine.checkpoint import load_checkpoint
from genbench.bench.engine.device import prepare_model
from genbench.bench.engine.ladder import rung_evaluation
from genbench.bench.engine.train import RunOptions, Trainer
from genbench.bench.report.ladder import best_per_rung, ladder_points
from genbench.bench.report.load import Run
from genbench.core.files import read_json
from genbench.metrics.base import EVAL_PROFILES

CPU = RunOptions(device=torch.device("cpu"), progress=False, warmup_steps=1)
EVAL = dataclasses.replace(
    EVAL_PROFILES["smoke"], n_test=32, n_samples=32, ladder_samples=32, allow_few_samples=True,
    feature_networks=("mnist",),
)  # fmt: skip
MODEL = "flow"  # samples that vary from the first step (an early VAE or GAN draws one grey image)
MULTIPLES = (2.5, 5.2, 8.0)  # rungs in FLOPs per step: steps 3, 6 and 8


@pytest.fixture(scope="module")
def data():
    return fake_mnist(n_train=128, n_val=32, n_test=64)


def flops_per_step(data, batch_size: int) -> int:
    torch.manual_seed(0)
    model, _ = models.build(MODEL, "smoke")
    return count_step(model, data.train[:batch_size])["train_flops_per_step"]


def ladder_config(data):
    base = models.build(MODEL, "smoke")[1]
    cfg = dataclasses.replace(base, batch_size=16, checkpoint_every=4, log_every=2, val_images=32)
    per_step = flops_per_step(data, cfg.batch_size)
    return dataclasses.replace(cfg, compute_budget=tuple(m * per_step for m in MULTIPLES))


def train(data, folder: Path, cfg, resume: bool = False):
    torch.manual_seed(0)
    model, _ = models.build(MODEL, "smoke")
    prepare_model(model, CPU.device, False)
    identity = {"model": MODEL, "seed": 0}
    ckpt = load_checkpoint(folder / "last.pt", identity) if resume else None
    evaluation = rung_evaluation(data, EVAL, CPU.device, 0, None)
    trainer = Trainer(model, data, cfg, 0, CPU, folder / "last.pt", identity, rung_evaluation=evaluation)
    return trainer.run(ckpt)


def rung_values(ladder: list[dict]) -> list[tuple]:
    return [(r["compute"], r["steps"], {k: e["value"] for k, e in r["metrics"].items()}) for r in ladder]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    cfg = ladder_config(data)
    return cfg, *train(data, tmp_path_factory.mktemp("straight"), cfg)


def test_each_rung_is_evaluated_at_ceil_of_rung_over_flops_per_step(straight):
    cfg, state, summary = straight
    per_step = summary["train_flops_per_step"]
    expected = [math.ceil(rung / per_step) for rung in cfg.compute_rungs]
    assert expected == [3, 6, 8]
    # the loop evaluates the rungs before the last step; the last is the final evaluation's (below)
    assert [r["steps"] for r in state.ladder] == expected[:-1] and state.step == expected[-1]
    assert [r["compute"] for r in state.ladder] == list(cfg.compute_rungs[:-1])
    assert [r["train_flops"] for r in state.ladder] == [s * per_step for s in expected[:-1]]
    for rung in state.ladder:
        bpd = rung["metrics"]["bpd"]
        assert bpd["value"] > 0 and bpd["kind"] == "estimate" and bpd["stderr"] > 0  # labelled
        fid = rung["metrics"].get("fid_mnist")
        assert fid["protocol"]["n_samples"] == 32 if fid else "collapsed" in rung["na"]
    assert "fid_mnist" in state.ladder[-1]["metrics"]
    # each rung is a point on the validation curves
    assert {r["step"] for r in state.history if r["split"] == "val"} >= set(expected)


def test_a_run_killed_during_a_rung_resumes_to_the_same_rung_values(data, straight, tmp_path, monkeypatch):
    """Die at the checkpoint written before rung 2's evaluation (rung 1 recorded), resume: the same
    rungs, valued the same, as the uninterrupted run."""
    import genbench.bench.engine.train

    cfg, reference, _ = straight
    original = genbench.bench.engine.train.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(path, model, optimizers, ema, state, identity, device):
        original(path, model, optimizers, ema, state, identity, device)
        if state.step == 6 and len(state.ladder) == 1:
            raise Killed

    monkeypatch.setattr(genbench.bench.engine.train, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(data, tmp_path, cfg)
    monkeypatch.setattr(genbench.bench.engine.train, "save_checkpoint", original)
    state, _ = train(data, tmp_path, cfg, resume=True)
    assert rung_values(state.ladder) == rung_values(reference.ladder)


def test_ladder_in_metrics_json_and_one_point_per_rung_in_the_report_csv(data, tmp_path, monkeypatch):
    from genbench.bench.engine import ladder

    per_step = flops_per_step(data, 32)  # the smoke profile's batch
    rungs = (1.5 * per_step, 3.0 * per_step)
    out = tmp_path / "results"
    rung_evaluations = []
    evaluate = ladder.evaluate
    monkeypatch.setattr(ladder, "evaluate", lambda *a, **k: rung_evaluations.append(1) or evaluate(*a, **k))
    run_dir = real_run(
        out, data, MODEL, "lad", train={"compute_budget": rungs}, evaluation={"ladder_samples": 32}
    )
    doc = read_json(run_dir / "metrics.json")
    assert [r["steps"] for r in doc["ladder"]] == [2, 3] and doc["metrics"]["steps"]["value"] == 3
    assert [r["compute"] for r in doc["ladder"]] == list(rungs)
    assert [r["train_flops"] for r in doc["ladder"]] == [2 * per_step, 3 * per_step]
    assert doc["protocol"]["compute_budget"] == list(rungs)
    # The last rung is the final evaluation, evaluated once, with the ladder's sample count: its
    # numbers are metrics.json's own; the loop evaluated only the first rung (likelihood, quality).
    assert len(rung_evaluations) == 2 and doc["protocol"]["n_samples"] == 32
    last = doc["ladder"][-1]
    assert last["protocol"]["evaluation"] == "the run's final evaluation"
    assert last["protocol"]["eval_seed"] == 0
    assert set(last["metrics"]) == set(doc["ladder"][0]["metrics"]) >= {"bpd", "fid_mnist", "is_mnist"}
    assert all(entry == doc["metrics"][key] for key, entry in last["metrics"].items())
    written = report.make_report(out, formats=("csv", "md"))
    budget = ", ".join(f"{r:g}" for r in rungs)  # FLOPs as 1.2e+09, not 1200000000.0
    assert f"compute budget (FLOPs) ({budget})" in (written.out_dir / "summary.md").read_text()
    csv = pd.read_csv(written.out_dir / "figures" / "ladder_smoke-cpu.csv")
    assert sorted(csv.metric.unique()) == ["FID (mnist)", "bits/dim"]
    for _, per_metric in csv.groupby("metric"):
        assert list(per_metric.compute) == list(rungs) and list(per_metric.steps) == [2, 3]
    assert "Best family at each rung" not in (written.out_dir / "summary.md").read_text()  # one family


def test_bad_compute_lists_are_one_line_usage_errors():
    for given, says in (("2e13,1e13", "must increase"), ("1e13,1e13", "must increase"),
                        ("abc", "numbers"), ("1e13,0", "positive"), ("1e13,,2e13", "numbers")):  # fmt: skip
        for command in ("run", "sweep"):
            line = one_line_error(invoke(command, "--models", "vae", "--compute", given, "--dry-run"), 2)
            assert "--compute" in line and says in line, line


# --------------------------------------------------------------------------------------------------
# Best family at each rung (runs built in memory: the table reads only metrics.json's ladder)


def ladder_run(model: str, seed: int, bpds: list[float], fids: list[float]) -> Run:
    def entry(column, value, label, unit, section, order, kind=None):
        fields = {"label": label, "unit": unit, "section": section, "order": order, "kind": kind}
        return {"value": value, "column": column, "variant": None, "stderr": None, **fields}

    ladder = [
        {"compute": c, "steps": 10 * (i + 1), "train_flops": c,
         "metrics": {"fid_mnist[sample]": entry("fid_mnist", 0.0, "FID (mnist)", "-", "quality", 101),
                     "bpd": entry("bpd", b, "Bits/dim", "bits/dim", "likelihood", 20, "exact"),
                     "fid_mnist": entry("fid_mnist", f, "FID (mnist)", "-", "quality", 101),
                     "is_mnist": entry("is_mnist", 1.0, "IS (mnist)", "-", "quality", 103)}}
        for i, (c, b, f) in enumerate(zip((1e9, 2e9), bpds, fids, strict=True))
    ]  # fmt: skip
    doc = {"model": model, "seed": seed, "protocol": {"feature_networks": {"mnist": "x"}}, "ladder": ladder}
    return Run(f"{model}-s{seed}", Path("."), "done", {}, doc)


def group_of(runs: list[Run]):
    return types.SimpleNamespace(name="g", group=types.SimpleNamespace(runs=runs))


def test_best_family_per_rung_names_the_better_and_says_within_noise_when_seeds_overlap():
    runs = [
        *(ladder_run("pixelcnn", s, [2.0 + 0.1 * s, 1.5 + 0.2 * s], [50.0 + s, 40.0 - s]) for s in range(3)),
        *(ladder_run("vae", s, [3.0 + 0.1 * s, 1.6 + 0.2 * s], [30.0 + s, 20.0 + s]) for s in range(3)),
    ]
    assert len(ladder_points(runs)) == 6 * 2 * 2  # a point per run, rung and metric
    table = best_per_rung(group_of(runs)).set_index(["Rung (FLOPs)", "Metric"])
    apart = table.loc[("1e+09", "bits/dim")]
    assert apart["Best family"].startswith("pixelcnn: 2.100") and apart["Next family"].startswith("vae")
    assert apart["Beyond seed noise?"].startswith("yes") and apart["Margin"].startswith("1.000")
    overlapping = table.loc[("2e+09", "bits/dim")]  # pixelcnn 1.5..1.9, vae 1.6..2.0
    assert overlapping["Best family"].startswith("pixelcnn")
    assert "within seed noise" in overlapping["Beyond seed noise?"]
    assert table.loc[("2e+09", "FID (mnist)")]["Best family"].startswith("vae")  # lower FID wins
    assert table.loc[("1e+09", "FID (mnist)")]["Best family"] == "vae: 31.00 (n=3)"  # default mode only
    few = best_per_rung(group_of(runs[:2] + runs[3:5])).iloc[0]["Beyond seed noise?"]
    assert few.startswith("n too small")


def test_a_ladder_config_trains_to_its_last_rung_and_must_increase():
    from genbench.bench.engine.budget import planned_steps, rung_steps
    from genbench.models.base import TrainConfig

    ladder = TrainConfig(compute_budget=(1500.0, 2000.0, 4500.0), max_steps=1)
    assert ladder.compute_rungs == (1500.0, 2000.0, 4500.0)
    assert rung_steps(ladder.compute_rungs, 1000) == [2, 2, 5] and planned_steps(ladder, 10, 1000) == 5
    for bad, says in (((2e9, 1e9), "increase"), ((1e9, 1e9), "increase"), ((1e9, -1.0), "positive")):
        with pytest.raises(ValueError, match=says):
            TrainConfig(compute_budget=bad)
