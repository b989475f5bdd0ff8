"""The compute ladder: one training run evaluated at several training-compute budgets.

`bench run --compute 2e13,6e13,2e14` trains once, to the last rung's steps. A rung is reached at the
step where the counted training FLOPs first reach it, ceil(rung / FLOPs per step) (``bench.engine.budget``);
there the loop evaluates the model as it is (its EMA weights where the run keeps them): the
likelihood the family has (exact, bound or estimate, with its standard error, on the profile's test
subset, as the final evaluation computes it) and FID and IS on ``EvalConfig.ladder_samples`` samples
(at most n_samples). The records go into the loop state, so a checkpoint holds every rung evaluated
before it and a resumed run evaluates only the rungs still to come; each rung's evaluation draws
from its own seed (``rung_seed``), so its numbers do not depend on when the run was interrupted.
metrics.json keeps the records as its "ladder" list.

The last rung (and any other at the last trained step) is not evaluated in the loop: the run's final
evaluation is its evaluation. A ladder run's final evaluation draws the ladder's sample count
(``rung_config``, applied by the plan), so every point of the curve is measured alike and the model
at the end of training is evaluated once, not twice (``final_rungs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from genbench.bench.engine.data import Dataset
from genbench.bench.engine.evaluate import SampleCollapse, evaluate
from genbench.core.distributed import derive_seed
from genbench.metrics import METRICS
from genbench.metrics.base import EvalConfig
from genbench.models.base import GenerativeModel

if TYPE_CHECKING:
    from genbench.bench.engine.in_run_evaluation import InRunEvaluation

STEPS_RULE = "steps = ceil(compute / train_flops_per_step)"

# A rung's evaluation: (model, rung index) -> {metrics.json key: entry}.
RungEvaluation = Callable[[GenerativeModel, int], dict[str, Any]]


def rung_seed(seed: int, index: int) -> int:
    """The evaluation seed of rung ``index`` of the run with ``seed`` (31 bits, as every RNG takes)."""
    return derive_seed("ladder", seed, index) % 2**31


def rung_config(config: EvalConfig) -> EvalConfig:
    """The evaluation protocol of a rung: the profile's, with ladder_samples samples (at most n_samples)."""
    return dataclasses.replace(config, n_samples=min(config.ladder_samples, config.n_samples))


def rung_metrics(config: EvalConfig, model: GenerativeModel) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The likelihood the family states (exact, bound or estimate; AIS for a model without one), and
    FID, IS (and the other sample-quality numbers) of each of the profile's feature networks."""
    likelihood = ("likelihood",) if model.likelihood is not None else ("ais",)
    return likelihood, tuple(f"fidelity_{net}" for net in config.feature_networks or ())


def rung_evaluation(
    data: Dataset, config: EvalConfig, device: torch.device, seed: int, cache_dir: Path | None
) -> RungEvaluation:
    """The evaluation the loop runs at each rung of the run with ``seed``. Samples collapsed to one
    image or flat ones (an early GAN or VAE) have no sample-quality numbers at that rung ("na" says
    why) instead of failing the run; the likelihood is measured all the same."""
    ladder_config = rung_config(config)

    def at_rung(model: GenerativeModel, index: int) -> dict[str, Any]:
        likelihood, quality = rung_metrics(ladder_config, model)
        common = dict(cache_dir=cache_dir, seed=rung_seed(seed, index), device=device)
        entries = evaluate(model, data, ladder_config, only=likelihood, **common)
        try:
            entries |= evaluate(model, data, ladder_config, only=quality, **common)
        except SampleCollapse as exc:
            return {"metrics": entries, "na": f"no sample-quality numbers: {exc}"}
        return {"metrics": entries}

    return at_rung


def rung_record(
    rung: float,
    steps: int,
    flops_per_step: int,
    seed: int,
    index: int,
    evaluated: dict[str, Any],
    final: bool = False,
) -> dict[str, Any]:
    """One rung of metrics.json's "ladder": where it stands and what the model scored there.
    ``final``: its numbers are the run's final evaluation's, drawn from the run's own seed."""
    return {
        "compute": rung,  # FLOPs: the rung as given
        "steps": steps,
        "train_flops": steps * flops_per_step,  # counted training FLOPs at that step (>= compute)
        "protocol": {
            "rule": STEPS_RULE,
            "train_flops_per_step": flops_per_step,
            "eval_seed": seed if final else rung_seed(seed, index),
            **({"evaluation": "the run's final evaluation"} if final else {}),
        },
        **evaluated,
    }


def final_rungs(trainer: InRunEvaluation, config: EvalConfig, entries: dict[str, Any]) -> list[dict]:
    """The records of the rungs the trainer's loop left to the final evaluation (those it reached, at
    the last trained step), from that evaluation's ``entries``: the numbers a rung measures
    (``rung_metrics``), in every sample mode."""
    likelihood, quality = rung_metrics(config, trainer.model)
    keys = {o.key for name in (*likelihood, *quality) for o in METRICS[name].outputs}
    measured = {key: e for key, e in entries.items() if e["column"] in keys}  # in every sample mode
    state, flops, evaluated = trainer.state, trainer.compute["train_flops_per_step"], {"metrics": measured}
    return [
        rung_record(trainer.cfg.compute_rungs[i], state.step, flops, trainer.seed, i, evaluated, final=True)
        for i in range(len(state.ladder), len(trainer.rung_steps))
        if trainer.rung_steps[i] <= state.step
    ]
