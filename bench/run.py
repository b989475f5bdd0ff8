"""One (model, seed) run from config to a finished run folder, and its resumption.

run folder: config.json (resolved config and provenance), status.json, history.csv, metrics.json,
samples.png, samples.pt, interpolation.png (latent models), checkpoints/last.pt.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

import torch
from genbench.bench import results
from genbench.bench.data import MNIST
from genbench.bench.evaluate import evaluate
from genbench.bench.timing import device_name
from genbench.bench.train import RunOptions, TrainingInterrupted, load_checkpoint, prepare_model, train
from genbench.core import files
from genbench.core.errors import UserError
from genbench.metrics.base import EVAL_PROFILES, EvalConfig
from genbench.models.base import TrainConfig, get_model_class

CHECKPOINT = Path("checkpoints") / "last.pt"


def _as_data(obj: Any) -> Any:
    """JSON round trip, so in-memory configs compare equal to the ones read back from config.json."""
    return json.loads(json.dumps(files._jsonable(obj)))


def _from_data(cls: type, values: dict[str, Any]):
    """Rebuild a config dataclass from JSON data (lists back to tuples), rejecting unknown fields."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise UserError(
            f"config.json has unknown {cls.__name__} fields {sorted(unknown)}; was it written by "
            "another genbench version?"
        )
    kwargs = {}
    for name, value in values.items():
        origin = typing.get_origin(hints[name])
        if isinstance(value, list) and (origin is tuple or hints[name] is tuple):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything that decides a run's numbers; written to config.json."""

    model: str
    profile: str
    seed: int
    model_config: Any
    train_config: TrainConfig
    eval_config: EvalConfig

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed into this run."""
        return _as_data(
            {
                "model": self.model,
                "model_config": self.model_config,
                "train_config": self.train_config,
                "seed": self.seed,
            }
        )


def plan(
    model: str,
    profile: str,
    seed: int,
    train_overrides: dict[str, Any] | None = None,
    eval_overrides: dict[str, Any] | None = None,
) -> RunPlan:
    cls = get_model_class(model)
    model_config, train_config = cls.profiles[profile]()
    try:
        train_config = dataclasses.replace(train_config, **(train_overrides or {}))
        eval_config = dataclasses.replace(EVAL_PROFILES[profile], **(eval_overrides or {}))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return RunPlan(cls.name, profile, seed, model_config, train_config, eval_config)


def plan_from_config(config: dict[str, Any]) -> RunPlan:
    cls = get_model_class(config["model"])
    return RunPlan(
        model=cls.name,
        profile=config["profile"],
        seed=int(config["seed"]),
        model_config=_from_data(cls.Config, config["model_config"]),
        train_config=_from_data(TrainConfig, config["train_config"]),
        eval_config=_from_data(EvalConfig, config["eval_config"]),
    )


def describe(plan: RunPlan, options: RunOptions) -> dict[str, Any]:
    """The resolved config as data (config.json, and --dry-run's output)."""
    return _as_data(
        {
            "model": plan.model,
            "profile": plan.profile,
            "seed": plan.seed,
            "device": options.device.type,
            "device_name": device_name(options.device),
            "precision": options.precision,
            "compile": options.compile,
            "model_config": plan.model_config,
            "train_config": plan.train_config,
            "eval_config": plan.eval_config,
        }
    )


def start(
    plan: RunPlan,
    options: RunOptions,
    out: Path,
    name: str | None = None,
    overwrite: bool = False,
    data_dir: Path | None = None,
) -> Path:
    """Create the run folder and its config.json; the run itself is ``execute``. ``data_dir`` is
    remembered so that --resume finds the same data without being told again."""
    run_id = results.make_run_id(plan.model, plan.profile, plan.seed, name)
    run_dir = results.create_run_dir(out, run_id, overwrite)
    config = {
        "run_id": run_id,
        **describe(plan, options),
        "created": results.now_iso(),
        "git_commit": results.git_commit(),
        "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None,
        "versions": results.versions(),
        "command": sys.argv,
    }
    files.write_json(run_dir / "config.json", config)
    results.set_status(run_dir, "running")
    return run_dir


def read_run(run_dir: Path) -> tuple[dict[str, Any], RunPlan]:
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.json); pass a folder under results/")
    config = files.read_json(run_dir / "config.json")
    try:
        return config, plan_from_config(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"{run_dir}/config.json is not a genbench run config ({exc}); start a new run"
        ) from None


def execute(
    run_dir: Path, data: MNIST, options: RunOptions, resume: bool = False, cache_dir: Path | None = None
) -> dict[str, Any]:
    """Train (or continue) and evaluate the run in ``run_dir``; returns metrics.json's content.
    status.json ends as done, failed (with the reason) or interrupted."""
    config, plan = read_run(run_dir)
    checkpoint = run_dir / CHECKPOINT
    try:
        ckpt = load_checkpoint(checkpoint, plan.identity()) if resume else None
        torch.manual_seed(plan.seed)  # weight init
        cls = get_model_class(plan.model)
        model = prepare_model(cls(plan.model_config), options)
        results.set_status(run_dir, "running")
        state, summary = train(
            model, data, plan.train_config, plan.seed, options, checkpoint, plan.identity(), resume=ckpt,
            history=run_dir / "history.csv",
        )  # fmt: skip
        entries = evaluate(
            model, data, plan.eval_config, options.device, plan.seed, summary, run_dir, cache_dir
        )
        report = {
            "run_id": config["run_id"],
            "model": plan.model,
            "profile": plan.profile,
            "seed": plan.seed,
            "device": options.device.type,
            "metrics": entries,
        }
        files.write_json(run_dir / "metrics.json", report)
    except TrainingInterrupted as exc:
        results.set_status(run_dir, "interrupted", str(exc))
        raise TrainingInterrupted(f"{exc}; resume with: bench run --resume {run_dir}") from None
    except BaseException as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        results.set_status(run_dir, "failed", reason)
        raise
    results.set_status(run_dir, "done")
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One line per finished run for the terminal, each number with its protocol."""
    m = report["metrics"]
    parts = [f"{report['run_id']}:"]
    for key in (
        "bpd",
        "iwae_bpd",
        "recon_mse",
        "fid_mnist",
        "is_mnist",
        "train_images_per_s",
        "sample_images_per_s",
    ):
        entry = m.get(key)
        if entry is None or entry["value"] is None:
            continue
        p = entry["protocol"]
        context = ", ".join(
            f"{k}={p[k]}"
            for k in ("kind", "k", "n_images", "n_samples", "feature_network")
            if p.get(k) is not None
        )
        parts.append(
            f"{entry['label']} {entry['value']:.4g} {entry['unit'] if entry['unit'] != '-' else ''}"
            f"{f' ({context})' if context else ''}".rstrip()
        )
    parts.append(f"[seed {report['seed']}, {report['device']}]")
    return " | ".join(parts)
