"""Planning: from what the user asked (a ``RunRequest``) to the list of runs, each a ``RunPlan`` with
the resolved model, training and evaluation configs that decide its numbers, as written to
config.json and read back on resume. Pure: nothing here touches a device or writes a file."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from genbench.bench.engine.data import (
    DEFAULT_DATASET,
    DEFAULT_SPEC,
    DatasetSpec,
    get_dataset_spec,
)
from genbench.bench.engine.device import PRECISIONS, compile_choice
from genbench.bench.engine.ladder import rung_config
from genbench.bench.engine.timing import device_name
from genbench.bench.engine.train import RunOptions
from genbench.bench.planning import overrides as typed
from genbench.bench.planning.settings import EVAL, FIELDS, TRAIN, RunSettings, option_name
from genbench.bench.record.results import NAME_PATTERN
from genbench.core import files
from genbench.core.errors import UsageError, UserError
from genbench.metrics.base import EVAL_PROFILES, EvalConfig
from genbench.models.base import ORIGINS, PROFILE_VALIDATIONS, TrainConfig, get_model_class, with_image_spec
from genbench.models.plugins import recorded_family


def as_data(obj: Any) -> Any:
    """JSON round trip, so in-memory configs compare equal to the ones read back from config.json."""
    return json.loads(json.dumps(files._jsonable(obj)))


def from_data(cls: type, values: dict[str, Any]):
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
    dataset: DatasetSpec = DEFAULT_SPEC  # recorded by name (and a folder's source); --resume keeps it
    # --set's fields, {"section.field": value} (bench.planning.overrides): in the run id and the protocol
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed into this run."""
        return as_data(
            {
                "model": self.model,
                **self.dataset.record(),
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
    dataset: DatasetSpec | str = DEFAULT_SPEC,
    sets: tuple[str, ...] = (),
) -> RunPlan:
    """A run's resolved configs: the profile's, with single fields overridden (the shortcut options'
    ``train_overrides``/``eval_overrides``, and --set's ``sets``), for the images of ``dataset`` (its
    shape and levels unless ``image_shape``/``levels`` say otherwise). Feature networks left unset
    (None) are the dataset's defaults for the profile."""
    cls = get_model_class(model)
    spec = get_dataset_spec(dataset)
    model_config, train_config = cls.profiles[profile]()
    train_config = dataclasses.replace(  # the profile's validation points, unless the family asks more
        train_config, validations=max(train_config.validations, PROFILE_VALIDATIONS.get(profile, 1))
    )
    overrides = typed.resolve(cls.name, cls.Config, sets)
    _check_set_once(overrides, {"train": train_overrides or {}, "eval": eval_overrides or {}})
    try:
        model_config = typed.apply(model_config, "model", overrides)
        model_config = with_image_spec(model_config, image_shape or spec.image_shape, levels or spec.levels)
        train_config = dataclasses.replace(train_config, **(train_overrides or {}))
        train_config = typed.apply(train_config, "train", overrides)
        eval_config = dataclasses.replace(EVAL_PROFILES[profile], **(eval_overrides or {}))
        eval_config = typed.apply(eval_config, "eval", overrides)
        if eval_config.feature_networks is None:
            eval_config = dataclasses.replace(eval_config, feature_networks=spec.feature_networks[profile])
        if isinstance(train_config.compute_budget, tuple):  # a ladder: its last rung is the final
            eval_config = rung_config(eval_config)  # evaluation, measured like every other rung
    except ValueError as exc:
        given = f" with --set {' '.join(sets)}" if sets else ""
        raise UsageError(f"{cls.name} on {spec.name}{given}: {exc}") from None
    return RunPlan(cls.name, profile, seed, model_config, train_config, eval_config, spec, overrides)


def _check_set_once(overrides: dict[str, Any], shortcuts: dict[str, dict[str, Any]]) -> None:
    """A field set by a shortcut option (--epochs) and by --set too is refused: which one wins?"""
    for section, values in shortcuts.items():
        for name in values:
            if f"{section}.{name}" in overrides:
                other = option_name(name) if name in FIELDS else f"{section}_overrides[{name!r}]"
                raise UsageError(f"--set {section}.{name} and {other} set one field; give one of them")


def plan_from_config(config: dict[str, Any]) -> RunPlan:
    cls = recorded_family(config)  # never a module the file names
    return RunPlan(
        model=cls.name,
        profile=config["profile"],
        seed=int(config["seed"]),
        model_config=from_data(cls.Config, config["model_config"]),
        train_config=from_data(TrainConfig, config["train_config"]),
        eval_config=from_data(EvalConfig, config["eval_config"]),
        # a folder by its source; a registry name; none: written before datasets were chosen
        dataset=get_dataset_spec(config.get("dataset_source") or config.get("dataset", DEFAULT_DATASET)),
        overrides=config.get("overrides") or {},  # written before --set
    )


def _compile_record(plan: RunPlan, options: RunOptions) -> dict[str, Any]:
    family = get_model_class(plan.model)
    on, why = compile_choice(family, options.device, plan.train_config, options.compile)
    return {"compile": on, "compile_reason": why}


def describe(plan: RunPlan, options: RunOptions) -> dict[str, Any]:
    """The resolved config as data (config.json, and --dry-run's output)."""
    return as_data(
        {
            "model": plan.model,
            "model_origin": ORIGINS.get(plan.model),
            "profile": plan.profile,
            "seed": plan.seed,
            **plan.dataset.record(),
            "overrides": plan.overrides,
            "device": options.device.type,
            "device_name": device_name(options.device),
            "precision": options.precision,
            **_compile_record(plan, options),
            "tensorboard": options.tensorboard,
            "processes": options.processes,
            "threads": options.threads,
            "model_config": plan.model_config,
            "train_config": plan.train_config,
            "eval_config": plan.eval_config,
        }
    )


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """What the user asked of `bench run`, as parsed by the CLI: which runs, made with ``settings``."""

    models: tuple[str, ...] = ()
    profile: str | None = None
    seeds: tuple[int, ...] = ()
    settings: RunSettings = RunSettings()
    out: Path = Path("results")
    name: str | None = None
    overwrite: bool = False
    resume: Path | None = None
    reevaluate: bool = False  # --resume of a done run evaluates it again
    cache_dir: Path | None = None
    progress: bool = True
    tensorboard: bool = False  # --tensorboard: live curves under <run>/tensorboard/
    dry_run: bool = False
    nproc: int = 1  # processes (GPUs) to train each run with; > 1 starts torchrun

    @property
    def cache(self) -> Path:
        """The feature cache: --cache-dir, else OUT/.cache (the resumed run's results folder's)."""
        return self.cache_dir or (self.resume.parent if self.resume is not None else self.out) / ".cache"


def plan_runs(request: RunRequest) -> list[RunPlan]:
    """The runs of a request that starts runs: one per (model, seed), each fully resolved."""
    if request.reevaluate:
        raise UsageError("--reevaluate goes with --resume RUN_DIR (a done run to evaluate again)")
    settings = request.settings
    return [
        plan(
            m,
            request.profile or "quick",
            s,
            settings.overrides(TRAIN),
            settings.overrides(EVAL),
            dataset=settings.dataset,
            sets=settings.sets,
        )  # fmt: skip
        for m in request.models or ("vae",)
        for s in request.seeds or (0,)
    ]


def check_resume_request(request: RunRequest) -> None:
    """--resume continues a run with its own config: no option that would change it."""
    given = [
        flag
        for flag, v in (
            ("--models", request.models),
            ("--profile", request.profile),
            ("--seeds", request.seeds),
            ("--dataset", request.settings.dataset != DEFAULT_SPEC),
            ("--name", request.name),
            ("--overwrite", request.overwrite),
        )
        if v
    ]
    given += request.settings.given_overrides()
    if given:
        raise UsageError(f"--resume continues a run with its own config; drop {', '.join(given)}")


def read_run(run_dir: Path) -> tuple[dict[str, Any], RunPlan]:
    """A run folder's config.json and the plan it records."""
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.json); pass a folder under results/")
    config = files.read_json(run_dir / "config.json")
    try:
        if not isinstance(config, dict):
            raise TypeError("not a JSON object")
        for key, types in (("run_id", str), ("data_dir", (str, type(None)))):
            if not isinstance(config.get(key), types):
                raise TypeError(f"{key} is {type(config.get(key)).__name__}")
        _check_recorded_values(config)
        return config, plan_from_config(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"{run_dir}/config.json is not a genbench run config ({exc}); start a new run"
        ) from None


def _check_recorded_values(config: dict[str, Any]) -> None:
    """What the command line validates, validated again as written in a config.json: the run id is
    one path component (it names files and folders), the precision one the loop runs with."""
    if not NAME_PATTERN.fullmatch(config["run_id"]) or len(config["run_id"]) > 255:
        raise ValueError(f"run_id {config['run_id']!r} is not a run id (letters, digits, '.', '_', '-')")
    if "precision" in config and config["precision"] not in PRECISIONS:
        raise ValueError(f"precision {config['precision']!r} is not one of {', '.join(PRECISIONS)}")
