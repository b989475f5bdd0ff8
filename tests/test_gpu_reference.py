"""benchmarks/gpu_reference.py: its CPU rehearsal runs the whole path (every family, the report, the
step benchmarks, the loop comparison) and publishes every file the GPU run will; a sample count too
small for Inception's FID is refused before anything runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from genbench import models

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_reference.py"


def _load():
    spec = importlib.util.spec_from_file_location("genbench_benchmarks_gpu_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_reference = _load()


def test_too_few_samples_for_inception_are_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "ref"
    assert gpu_reference.main(["--out", str(out), "--n-samples", "2047"]) == 2
    error = capsys.readouterr().err
    assert "--n-samples 2047: FID with the inception network needs at least 2048 samples" in error
    assert not tmp_path.joinpath(".ref.partial").exists() and not out.exists()


def test_the_full_reference_needs_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_reference.torch.cuda, "is_available", lambda: False)
    assert gpu_reference.main(["--out", str(tmp_path / "ref")]) == 1
    assert "--rehearsal runs it on the CPU" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_every_family_gets_its_model_overrides_and_the_budget():
    settings = gpu_reference.Settings.make(rehearsal=False, budget_s=None, n_samples=None)
    plans = gpu_reference.plans(settings, sorted(models.MODELS))
    assert [p.model for p in plans] == sorted(models.MODELS)
    for plan in plans:
        assert plan.profile == "full" and plan.train_config.time_budget_s == 40.0
        assert plan.eval_config.n_samples == 10_000 and plan.eval_config.feature_networks == (
            "mnist",
            "inception",
        )
        for field, value in gpu_reference.MODEL_OVERRIDES.get(plan.model, {}).items():
            assert getattr(plan.model_config, field) == value


@pytest.mark.slow
def test_rehearsal_writes_the_whole_reference(tmp_path, mnist_dir):
    out = tmp_path / "reference" / "cpu"
    assert gpu_reference.main(["--rehearsal", "--out", str(out), "--data-dir", str(mnist_dir)]) == 0
    for name in ("README.md", "reference.json", "benchmarks.json", "compare_loop.txt", "report/summary.md",
                 "report/index.html", "report/runs.csv", "report/summary.tex"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not (out.parent / ".cpu.partial").exists()  # the staging folder is gone once published
    families = sorted(models.MODELS)
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == [f"{name}-smoke-s0-reference" for name in families]
    for run in runs:
        folder = out / "runs" / run
        assert (folder / "metrics.json").is_file() and (folder / "config.json").is_file()
        assert not (folder / "checkpoints").exists() and not (folder / "samples.pt").exists()
    assert sorted(set(pd.read_csv(out / "report" / "runs.csv")["model"])) == families
    summary = (out / "report" / "summary.md").read_text()
    assert all(f"| {name} " in summary for name in families)
    doc = json.loads((out / "reference.json").read_text())
    assert [row["model"] for row in doc["families"]] == families
    assert all(row["status"] == "done" and row["steps"] >= 1 for row in doc["families"])
    assert "time budget" in {row["stopped_by"] for row in doc["families"]}  # the slow families hit it
    assert doc["benchmarks_rc"] == doc["compare_loop_rc"] == 0
    assert json.loads((out / "benchmarks.json").read_text())["benchmarks"]
    assert "data path only" in (out / "compare_loop.txt").read_text()
    readme = (out / "README.md").read_text()
    for fact in ("--rehearsal", doc["environment"]["torch"], doc["environment"]["date"], "start-up", "total"):
        assert fact in readme
    config = json.loads((out / "runs" / "diffusion-smoke-s0-reference" / "config.json").read_text())
    assert (
        config["model_config"]["sample_steps"] == gpu_reference.MODEL_OVERRIDES["diffusion"]["sample_steps"]
    )
