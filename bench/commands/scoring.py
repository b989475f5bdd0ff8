"""``bench eval``: measure what was not measured in the run that made it. This module holds the
request both modes share and the first mode; ``bench.commands.external`` scores other generators' samples.

A run's checkpoint under another evaluation protocol (more samples, more test images, another IWAE
k, other feature networks, another sampler step count) goes to a new folder beside the run,
``<run_id>+eval-<name>``, never into the run itself, and holds no checkpoint. Its metrics.json has
the run's model and seed, a protocol block of its own (with "evaluation": ``EVALUATION``, so the
report groups it apart from the run even when nothing else differs) and "source": {"kind":
"checkpoint", "run_id", "path" (relative to the folder), "sha256", "step", "finished"}; its
training-cost numbers are the run's own (its metrics.json, else its checkpoint). config.json is the
run's plus "evaluation_of" (the run id), "checkpoint" and "evaluation" (the overrides, the device).
Everything that can be checked is checked before the folder is created.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from genbench.bench.commands.sampling import load_run, read_checked
from genbench.bench.engine.data import DatasetSpec, default_feature_networks, load_dataset
from genbench.bench.engine.device import resolve_device
from genbench.bench.engine.evaluate import evaluate, metrics_document, protocol_block
from genbench.bench.engine.timing import device_name
from genbench.bench.planning.settings import RunSettings
from genbench.bench.record import results
from genbench.core import files
from genbench.core.errors import UsageError, UserError
from genbench.metrics.base import EVAL_PROFILES, EvalConfig
from genbench.metrics.fidelity import NETWORKS, check_sample_count, resolve_network
from genbench.metrics.performance import PEAK_MEMORY, TRAIN_SPEED, WALL_TIME

EVALUATION = "bench eval of a checkpoint"
EVAL_INFIX = "+eval-"
SAMPLER_STEPS_FIELD = "sample_steps"  # the model-config field --sampler-steps sets (the diffusion family's)


@dataclasses.dataclass(frozen=True)
class EvalRequest:
    """What the user asked of ``bench eval``, as parsed by the CLI."""

    run_dir: Path | None = None
    samples: Path | None = None
    key: str | None = None
    reference: str | None = (
        None  # --reference: a folder, an array file or DATASET:SPLIT (bench.commands.reference)
    )
    dataset: DatasetSpec | None = None
    profile: str | None = None
    n_samples: int | None = None
    networks: tuple[str, ...] = ()
    n_test: int | None = None
    iwae_k: int | None = None
    ais_steps: int | None = None
    ais_chains: int | None = None
    sampler_steps: int | None = None
    settings: RunSettings = RunSettings()  # device, data folder, allow_few_samples, inception_weights
    cache_dir: Path | None = None
    name: str | None = None
    results: Path | None = None


def check_request(request: EvalRequest) -> None:
    """Exactly one thing to evaluate, and only the options that apply to it."""
    if (request.run_dir is None) == (request.samples is None):
        raise UsageError("pass a RUN_DIR to re-evaluate, or --samples PATH to score samples (not both)")
    if request.run_dir is not None:
        wrong = {
            "--key": request.key, "--dataset": request.dataset, "--out": request.results,
            "--reference": request.reference,
        }  # fmt: skip
        what = "a RUN_DIR (its result goes beside the run)"
    else:
        wrong = {
            "--n-test": request.n_test,
            "--iwae-k": request.iwae_k,
            "--ais-steps": request.ais_steps,
            "--ais-chains": request.ais_chains,
            "--sampler-steps": request.sampler_steps,
        }
        what = "--samples (sample quality only)"
    given = [flag for flag, value in wrong.items() if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)} does not apply to {what}; drop it")
    if request.reference is not None and request.dataset is not None:
        raise UsageError("--reference replaces the --dataset's test images; drop one of them")
    for net in request.networks:
        if net not in NETWORKS:
            raise UsageError(f"--network {net}: choose from {', '.join(NETWORKS)}")
    if request.name is not None:
        try:
            results.check_run_name(request.name)  # it becomes part of a folder name, as a run's does
        except ValueError as exc:
            raise UsageError(f"--name: {exc}") from None


def eval_config(
    base: EvalConfig,
    dataset: DatasetSpec,
    profile: str,
    networks: tuple[str, ...] = (),
    allow_few_samples: bool = False,
    inception_weights: Path | None = None,
    **fields: int | None,
) -> EvalConfig:
    """``base`` with the given fields overridden (None: keep) and its feature networks resolved."""
    overrides = {
        "feature_networks": tuple(networks) or None,
        "allow_few_samples": allow_few_samples or None,
        "inception_weights": str(Path(inception_weights).resolve()) if inception_weights else None,
        **fields,
    }
    try:
        config = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if config.feature_networks is None:  # the dataset's own networks for the profile
        config = dataclasses.replace(config, feature_networks=default_feature_networks(dataset, profile))
    return config


def check_networks(config: EvalConfig, n_samples: int) -> None:
    """Each feature network's weights found, and enough samples for it: before anything is written."""
    for net in config.feature_networks:
        check_sample_count(
            n_samples, resolve_network(net, config.inception_weights), config.allow_few_samples
        )


def stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


# ---------------------------------------------------------------------------------------------------------
# A run's checkpoint under another protocol


def with_sampler_steps(model: str, model_config: Any, steps: int | None) -> Any:
    """The model config with its sampler step count set, for a family that has one."""
    if steps is None:
        return model_config
    if SAMPLER_STEPS_FIELD not in {f.name for f in dataclasses.fields(model_config)}:
        raise UsageError(
            f"--sampler-steps: {model} has no sampler step count (no {SAMPLER_STEPS_FIELD} field)"
        )
    try:
        return dataclasses.replace(model_config, **{SAMPLER_STEPS_FIELD: steps})
    except ValueError as exc:
        raise UsageError(f"--sampler-steps {steps}: {exc}") from None


def training_summary(run_dir: Path, config: dict[str, Any], plan, state: dict[str, Any]) -> dict[str, Any]:
    """The run's training-cost numbers for the cost metric: the values the run itself reported (its
    metrics.json), else its checkpoint's loop state (an interrupted run)."""
    seconds = state.get("timed_seconds") or 0.0
    summary = {
        TRAIN_SPEED.key: state["timed_images"] / seconds if seconds > 0 else None,
        "steps_timed": state.get("timed_steps"),
        PEAK_MEMORY.key: state.get("peak_memory_mb"),
        WALL_TIME.key: state.get("wall_time_s"),
        "batch_size": plan.train_config.batch_size,
        "precision": config.get("precision"),
        "compile": config.get("compile"),
        "device_name": config.get("device_name"),
        "steps": state.get("step"),
    }
    path = run_dir / "metrics.json"
    reported = files.read_json(path).get("metrics", {}) if path.is_file() else {}
    for output in (TRAIN_SPEED, PEAK_MEMORY, WALL_TIME):
        if (reported.get(output.key) or {}).get("value") is not None:
            summary[output.key] = reported[output.key]["value"]
    summary["warmup_steps"] = (reported.get(TRAIN_SPEED.key) or {}).get("protocol", {}).get("warmup_steps")
    summary["memory_kind"] = (reported.get(PEAK_MEMORY.key) or {}).get("protocol", {}).get("kind")
    return summary


def _checkpoint_source(run_dir: Path, loaded, out_dir: Path) -> dict[str, Any]:
    """What was evaluated: the run's checkpoint (relative to the new folder), its hash and step."""
    return {
        "kind": "checkpoint",
        "run_id": run_dir.name,
        "path": os.path.relpath(loaded.checkpoint, out_dir),
        "sha256": files.file_sha256(loaded.checkpoint),
        "step": loaded.state.get("step"),
        "finished": loaded.state.get("finished"),
    }


def _evaluation_record(request: EvalRequest, evaluation: EvalConfig, device: torch.device) -> dict[str, Any]:
    """config.json's "evaluation": the options that changed the protocol, and where it ran."""
    overrides = {
        "profile": request.profile,
        "n_samples": request.n_samples,
        "n_test": request.n_test,
        "iwae_k": request.iwae_k,
        "ais_steps": request.ais_steps,
        "ais_chains": request.ais_chains,
        "feature_networks": list(request.networks) or None,
        SAMPLER_STEPS_FIELD: request.sampler_steps,
        "allow_few_samples": request.settings.allow_few_samples or None,
        "inception_weights": evaluation.inception_weights if request.settings.inception_weights else None,
    }
    return {
        "overrides": {k: v for k, v in overrides.items() if v is not None},
        "device": device.type,
        "device_name": device_name(device),
        "git_commit": results.git_commit(),
        "versions": results.versions(),
        "command": sys.argv,
    }


def reevaluate(request: EvalRequest, echo: Callable[..., None], data=None) -> tuple[dict[str, Any], Path]:
    """Evaluate a run's checkpoint under the requested protocol into a new folder beside it; returns
    metrics.json's content and the folder. ``data``: the dataset, when the caller has it loaded."""
    run_dir = Path(request.run_dir).resolve()  # "." (inside the run) names the folder, not a place in it
    config, plan = read_checked(run_dir)
    profile = request.profile or plan.profile
    base = EVAL_PROFILES[request.profile] if request.profile else plan.eval_config
    evaluation = eval_config(
        base, plan.dataset, profile, request.networks, request.settings.allow_few_samples,
        request.settings.inception_weights,
        n_samples=request.n_samples, n_test=request.n_test, iwae_k=request.iwae_k,
        ais_steps=request.ais_steps, ais_chains=request.ais_chains,
    )  # fmt: skip
    model_config = with_sampler_steps(plan.model, plan.model_config, request.sampler_steps)
    check_networks(evaluation, evaluation.n_samples)
    out_dir = run_dir.parent / f"{run_dir.name}{EVAL_INFIX}{request.name or stamp()}"
    if out_dir.exists():
        raise UserError(f"{out_dir} exists: a re-evaluation is never overwritten; pick another --name")
    device = resolve_device(request.settings.device)
    loaded = load_run(run_dir, device, model_config)
    if data is None:
        recorded = config.get("data_dir")
        data_dir = request.settings.data_dir or (
            Path(recorded) if recorded and Path(recorded).is_dir() else None
        )
        data = load_dataset(plan.dataset, data_dir, device=device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    source = _checkpoint_source(run_dir, loaded, out_dir)
    if not source["finished"]:
        step = source["step"]
        echo(
            f"note: {run_dir.name} has not finished training; evaluating its step {step} checkpoint", err=True
        )
    summary = training_summary(run_dir, config, plan, loaded.state)
    try:
        out_dir.mkdir()
    except OSError as exc:
        raise UserError(f"cannot create {out_dir} ({exc.strerror or exc})") from None
    files.write_json(
        out_dir / "config.json",
        {
            **config,
            "run_id": out_dir.name,
            "created": results.now_iso(),
            "evaluation_of": run_dir.name,
            "checkpoint": source["path"],
            "model_config": model_config,
            "eval_config": evaluation,
            "evaluation": _evaluation_record(request, evaluation, device),
        },
    )
    results.set_status(out_dir, "running")
    try:
        cache = request.cache_dir or run_dir.parent / ".cache"
        entries = evaluate(loaded.model, data, evaluation, device, plan.seed, summary, out_dir, cache)
        protocol = protocol_block(
            data, evaluation, plan.profile, device, config.get("precision"), overrides=plan.overrides,
            time_budget_s=plan.train_config.time_budget_s, compute_budget=plan.train_config.compute_budget,
        )  # fmt: skip
        steps = f", {SAMPLER_STEPS_FIELD} {request.sampler_steps}" if request.sampler_steps else ""
        protocol["evaluation"] = EVALUATION + steps
        report = metrics_document(out_dir.name, loaded.model, plan.seed, protocol, entries)
        report["source"] = source
        files.write_json(out_dir / "metrics.json", report)
    except BaseException as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        results.set_status(out_dir, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", reason)
        raise
    results.set_status(out_dir, "done")
    return report, out_dir
