"""--compile by default on the CPU where it pays: a per-family fact (cpu_compile_break_even) resolved
in one place (bench.engine.device.compile_choice), recorded in config.json and the training protocol, and
--compile/--no-compile win."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from cli_utils import invoke

from genbench import models
from genbench.bench.engine.device import COMPILE_MARGIN, compile_choice

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _quick(name: str):
    return models.get_model_class(name), models.get_model_class(name).profiles["quick"]()[1]


@pytest.mark.parametrize("name", ["flow", "glow"])
def test_the_flows_compile_by_default_on_the_cpu_at_full_but_not_at_quick(name):
    """Idle, the quick run's 1000 steps do not pay for the compile (README, CPU speed)."""
    family, cfg = _quick(name)
    assert family.cpu_compile_break_even is not None
    steps = family.cpu_compile_break_even
    why = f"default on: compiling pays for {family.name} on a CPU after about {steps} steps"
    assert compile_choice(family, CPU, family.profiles["full"]()[1], None) == (True, why)
    assert compile_choice(family, CPU, cfg, None)[0] is False


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_family_resolves_from_its_own_fact(name):
    family, cfg = _quick(name)
    on, why = compile_choice(family, CPU, cfg, None)
    steps = cfg.max_steps
    pays = family.cpu_compile_break_even is not None and (
        steps is None or steps >= COMPILE_MARGIN * family.cpu_compile_break_even
    )
    assert on == pays and why.startswith("default on" if pays else "default off")
    smoke = family.profiles["smoke"]()[1]
    assert compile_choice(family, CPU, smoke, None)[0] is False  # a few steps never pay for a compile
    assert compile_choice(family, CUDA, cfg, None)[0] is False  # measured on the CPU only
    assert compile_choice(family, CPU, cfg, False) == (False, "--no-compile")
    assert compile_choice(family, CPU, smoke, True) == (True, "--compile")
    budget = dataclasses.replace(cfg, time_budget_s=60.0)
    assert compile_choice(family, CPU, budget, None)[0] is False


def test_the_families_where_it_costs_time_stay_eager():
    for name in ("gan",):  # DCGAN's compiled step is slower than its eager one (README, CPU speed)
        assert models.get_model_class(name).cpu_compile_break_even is None


def _dry_run(*args: str) -> dict[str, dict]:
    args = ("--models", "flow,gan", "--profile", "full", "--device", "cpu", "--dry-run", *args)
    result = invoke("run", *args)
    assert result.exit_code == 0, result.output
    return {p["model"]: p for p in json.loads(result.output)}


def test_config_records_the_choice_and_the_user_can_force_it():
    plans = _dry_run()
    assert plans["flow"]["compile"] is True and plans["flow"]["compile_reason"].startswith("default on")
    assert plans["gan"]["compile"] is False and plans["gan"]["compile_reason"].startswith("default off")
    off = _dry_run("--no-compile")
    assert [(p["compile"], p["compile_reason"]) for p in off.values()] == [(False, "--no-compile")] * 2
    on = _dry_run("--compile")
    assert [(p["compile"], p["compile_reason"]) for p in on.values()] == [(True, "--compile")] * 2
    smoke = invoke("run", "--models", "flow", "--profile", "smoke", "--device", "cpu", "--dry-run")
    assert json.loads(smoke.output)[0]["compile"] is False
