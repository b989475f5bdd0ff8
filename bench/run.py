"""Runs: from a request to finished run folders. The CLI parses options and calls ``run_all``;
everything that decides how a run is set up lives here (overrides, precision, determinism,
threads, resume rules, failure aggregation).

run folder: config.json (resolved config and provenance), status.json, history.csv, metrics.json,
samples.png, samples.pt, interpolation.png (latent models), checkpoints/last.pt.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from genbench.bench import results
from genbench.bench.checkpoint import load_checkpoint
from genbench.bench.data import MNIST, load_mnist, resolve_data_dir
from genbench.bench.device import prepare_model, resolve_device, resolve_precision
from genbench.bench.evaluate import evaluate, metrics_document, protocol_block
from genbench.bench.timing import device_name
from genbench.bench.train import RunOptions, Trainer, TrainingInterrupted
from genbench.core import files
from genbench.core.errors import UserError
from genbench.metrics.base import EVAL_PROFILES, EvalConfig
from genbench.models.base import TrainConfig, get_model_class, with_image_spec

CHECKPOINT = Path("checkpoints") / "last.pt"


class UsageError(UserError):
    """A bad combination of options: exit status 2, like click's own usage errors."""

    exit_code = 2


def _as_data(obj: Any) -> Any:
    """JSON round trip, so in-memory configs compare equal to the ones read back from config.json."""
    return json.loads(json.dumps(files._jsonable(obj)))


def _from_data(cls: type, values: dict[str, Any]):
    """Rebuild a config dataclass from JSON data (lists back to tuples), rejecting unknown fields."""
    if not isinstance(values, dict):
        raise TypeError(f"{cls.__name__} must be a JSON object, got {type(values).__name__}")
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
        kwargs[name] = tuple(value) if isinstance(value, list) and _wants_tuple(hints[name]) else value
    return cls(**kwargs)


def _wants_tuple(hint: Any) -> bool:
    return (
        hint is tuple
        or typing.get_origin(hint) is tuple
        or any(_wants_tuple(a) for a in typing.get_args(hint))
    )


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
    image_shape: tuple[int, int, int] | None = None,
    levels: int | None = None,
) -> RunPlan:
    """A run's resolved configs: the profile's, with single fields overridden, for data of
    ``image_shape`` and ``levels`` (default: the profile's)."""
    cls = get_model_class(model)
    model_config, train_config = cls.profiles[profile]()
    try:
        model_config = with_image_spec(
            model_config, image_shape or model_config.image_shape, levels or model_config.levels
        )
        train_config = dataclasses.replace(train_config, **(train_overrides or {}))
        eval_config = dataclasses.replace(EVAL_PROFILES[profile], **(eval_overrides or {}))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
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
        if not isinstance(config, dict):
            raise TypeError("not a JSON object")
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
        model = prepare_model(cls(plan.model_config), options.device, options.compile)
        results.set_status(run_dir, "running")
        trainer = Trainer(
            model,
            data,
            plan.train_config,
            plan.seed,
            options,
            checkpoint,
            plan.identity(),
            history=run_dir / "history.csv",
        )
        _, summary = trainer.run(ckpt)
        entries = evaluate(
            model, data, plan.eval_config, options.device, plan.seed, summary, run_dir, cache_dir
        )
        protocol = protocol_block(data, plan.eval_config, plan.profile, options.device, options.precision)
        report = metrics_document(config["run_id"], model, plan.seed, protocol, entries)
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


# Shown in the one line printed per finished run, in this order, each with its protocol.
SUMMARY_KEYS = (
    "bpd",
    "iwae_bpd",
    "recon_mse",
    "fid_mnist",
    "is_mnist",
    "train_images_per_s",
    "sample_images_per_s",
)


def summary_line(report: dict[str, Any]) -> str:
    """One line per finished run for the terminal, each number with its protocol."""
    m = report["metrics"]
    parts = []
    for key in SUMMARY_KEYS:
        entry = m.get(key)
        if entry is None or entry["value"] is None:
            continue
        p = entry["protocol"]
        context = [
            f"{k}={p[k]}" for k in ("n_images", "n_samples", "feature_network", "sample_mode") if p.get(k)
        ]
        if entry.get("estimator"):
            context.insert(0, entry["estimator"])
        mark = "<= " if entry.get("kind") in ("bound", "estimate") else ""
        unit = entry["unit"] if entry["unit"] != "-" else ""
        parts.append(
            f"{entry['label']} {mark}{entry['value']:.4g} {unit}".rstrip()
            + (f" ({', '.join(context)})" if context else "")
        )
    return f"{report['run_id']}: " + " | ".join(parts) + f" [seed {report['seed']}, {report['protocol']['device']}]"


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """What the user asked of `bench run`, as parsed by the CLI."""

    models: tuple[str, ...] = ()
    profile: str | None = None
    seeds: tuple[int, ...] = ()
    out: Path = Path("results")
    data_dir: Path | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    threads: int | None = None
    train_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    eval_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    name: str | None = None
    overwrite: bool = False
    resume: Path | None = None
    cache_dir: Path | None = None
    progress: bool = True
    dry_run: bool = False


def _check_resume_request(request: RunRequest) -> None:
    given = [
        flag
        for flag, v in (
            ("--models", request.models),
            ("--profile", request.profile),
            ("--seeds", request.seeds),
            ("--name", request.name),
            ("--overwrite", request.overwrite),
        )
        if v
    ]
    given += [f"--{k.replace('_', '-')}" for k in {**request.train_overrides, **request.eval_overrides}]
    if given:
        raise UsageError(f"--resume continues a run with its own config; drop {', '.join(given)}")


def run_all(request: RunRequest, echo: Callable[..., None]) -> list[dict[str, Any]]:
    """Plan, then train and evaluate every (model, seed) of the request (or continue one run).
    One failed run does not stop the others; the failures are reported together at the end."""
    if request.threads is not None:
        torch.set_num_threads(request.threads)
    device = resolve_device(request.device)
    options = RunOptions(
        device=device,
        precision=resolve_precision(request.precision, device),
        compile=request.compile,
        progress=request.progress,
    )
    data_dir = request.data_dir
    if request.resume is not None:
        _check_resume_request(request)
        config, resumed = read_run(request.resume)
        targets: list[tuple[RunPlan, Path | None]] = [(resumed, request.resume)]
        if data_dir is None and config.get("data_dir") and Path(config["data_dir"]).is_dir():
            data_dir = Path(config["data_dir"])
    else:
        plans = [
            plan(m, request.profile or "quick", s, request.train_overrides, request.eval_overrides)
            for m in request.models or ("vae",)
            for s in request.seeds or (0,)
        ]
        targets = [(p, None) for p in plans]
    if request.dry_run:
        echo(json.dumps([describe(p, options) for p, _ in targets], indent=2))
        return []

    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    data = load_mnist(data_dir, device=device)
    cache = (
        request.cache_dir or (request.resume.parent if request.resume is not None else request.out) / ".cache"
    )
    reports, failures = [], []
    for run_plan, run_dir in targets:
        run_dir = run_dir or start(
            run_plan,
            options,
            request.out,
            request.name,
            request.overwrite,
            data_dir=resolve_data_dir(data_dir),
        )
        echo(f"{run_plan.model} seed {run_plan.seed} ({run_plan.profile}) on {device} -> {run_dir}", err=True)
        try:
            report = execute(run_dir, data, options, resume=run_dir == request.resume, cache_dir=cache)
        except UserError as exc:
            if isinstance(exc, TrainingInterrupted) or len(targets) == 1:
                raise
            failures.append(f"{run_dir.name}: {exc}")  # one diverged model does not stop the others
            echo(f"error: {exc}", err=True)
            continue
        echo(summary_line(report))
        reports.append(report)
    if failures:
        raise UserError(f"{len(failures)} of {len(targets)} runs failed: " + "; ".join(failures))
    return reports
