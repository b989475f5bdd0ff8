"""The settings a run is made with, declared once: each is a field of ``RunSettings`` with its default
and the click option that fills it. `bench run` and `bench sweep` take every one of them through
``settings_options``; ``RunSettings.from_options`` builds the value, and every request holds it.

Adding an option that changes a number is one field here (its option beside it, ``target`` naming
the config it overrides) and the config field it sets; nothing else copies it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from genbench.bench.engine.data import DEFAULT_SPEC, DatasetSpec, get_dataset_spec
from genbench.bench.planning.cli_options import (
    ComputeBudget,
    _NamedFolder,
    _options,
    _parse_device,
    _parse_threads,
)

TRAIN, EVAL = "train_config", "eval_config"  # the configs an override sets a field of
SET = "set"  # --set: fields of any config, by section (bench.planning.overrides)


def _setting(default: Any, *decls: str, target: str | None = None, **option: Any) -> Any:
    """A field of RunSettings: its default, its click option (``decls`` and ``option`` as click.option
    takes them; the parameter is the field) and, for an override, the config (TRAIN or EVAL) whose
    field of the same name it sets (SET: the --set assignments). No ``decls``: a setting without a
    shared option."""
    metadata = {
        "option": click.option(*decls, default=default, **option) if decls else None,
        "target": target,
    }
    return dataclasses.field(default=default, metadata=metadata)


def _parse_sets(ctx, param, value: tuple[str, ...]) -> tuple[str, ...]:
    """--set values checked for their form and section (their fields are checked against the family):
    a bad one is bench's one-line UsageError."""
    from genbench.bench.planning.overrides import check_syntax

    return check_syntax(value)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How every run of a command is made: where it runs, and the profile fields it overrides
    (None or False: the profile's own)."""

    device: str = _setting(
        "auto", "--device", callback=_parse_device, metavar="auto|cpu|cuda|cuda:N|mps", help="Device."
    )
    precision: str = _setting(
        "auto", "--precision", type=click.Choice(["auto", "fp32", "bf16"]),
        help="Training precision; auto = bf16 on CUDA, fp32 elsewhere. Evaluation is always fp32.",
    )  # fmt: skip
    compile: bool | None = _setting(
        None, "--compile/--no-compile", "compile",
        help="torch.compile the training step, or not.  [default: on the CPU for the families where it "
        "pays within the run's steps (see README, CPU speed), else off; config.json says which and why]",
    )  # fmt: skip
    threads: int | None = _setting(
        None, "--threads", type=click.IntRange(min=1), callback=_parse_threads,
        help="CPU threads for torch.  [default: the usable cores other programs leave free, measured "
        "before each run and recorded in config.json; OMP_NUM_THREADS if set]",
    )  # fmt: skip
    data_dir: Path | None = _setting(
        None, "--data-dir", type=_NamedFolder(path_type=Path),
        help="Folder holding the dataset in torchvision's layout: MNIST/raw/, FashionMNIST/raw/, "
        "cifar-10-batches-py/ (else $GENBENCH_DATA, else ./data; downloaded when missing).",
    )  # fmt: skip
    # A setting of every run, but each command takes it its own way (`run` one dataset, `sweep` a
    # list of them as a grid axis), so it has no shared option.
    dataset: DatasetSpec = _setting(DEFAULT_SPEC)  # parsed once, at the option (cli_options.DatasetType)
    epochs: int | None = _setting(
        None, "--epochs", target=TRAIN, type=click.IntRange(min=1), help="Override the profile's epochs."
    )
    batch_size: int | None = _setting(
        None, "--batch-size", target=TRAIN, type=click.IntRange(min=1), help="Override the batch size."
    )
    lr: float | None = _setting(
        None, "--lr", target=TRAIN, type=click.FloatRange(min=0, min_open=True),
        help="Override the learning rate.",
    )  # fmt: skip
    max_steps: int | None = _setting(
        None, "--max-steps", target=TRAIN, type=click.IntRange(min=1), help="Stop after this many steps."
    )
    time_budget_s: float | None = _setting(
        None, "--time-budget", "time_budget_s", target=TRAIN, type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        help="Stop each run's training at the first step past this wall time (an equal-compute budget); "
        "the steps reached are recorded, and --max-steps of them repeats the run.",
    )  # fmt: skip
    compute_budget: float | tuple[float, ...] | None = _setting(
        None, "--compute", "compute_budget", target=TRAIN, type=ComputeBudget(), metavar="FLOPS[,FLOPS...]",
        help="Train each run for ceil(FLOPS / FLOPs per step) steps, counted on the model at its start: "
        "the same steps on every machine, whatever the profile's epochs and max steps (e.g. 2e14). An "
        "increasing list (2e13,6e13,2e14) is a compute ladder: one training to the last, evaluated at each.",
    )  # fmt: skip
    n_samples: int | None = _setting(
        None, "--n-samples", target=EVAL, type=click.IntRange(min=1),
        help="Override the number of generated samples for sample-quality metrics.",
    )  # fmt: skip
    iwae_k: int | None = _setting(
        None, "--iwae-k", target=EVAL, type=click.IntRange(min=1), help="Override the IWAE sample count k."
    )
    # The shortcut options above set their field without naming the run; --set names it (a hash in
    # the run id) and puts it in the protocol the report groups by. A field set both ways is refused.
    sets: tuple[str, ...] = _setting(
        (), "--set", "sets", target=SET, multiple=True, callback=_parse_sets, metavar="SECTION.FIELD=VALUE",
        help="Set any field of the model's, train or eval config, typed by the field (repeatable), "
        "e.g. --set model.latent_dim=64 --set train.ema_decay=0.999; tuples as 16,32, none for None.",
        show_default=False,
    )  # fmt: skip
    allow_few_samples: bool = _setting(
        False, "--allow-few-samples", target=EVAL, is_flag=True,
        help="Compute FID even with fewer samples than the feature dimension (rank-deficient covariance).",
    )  # fmt: skip
    inception_weights: Path | None = _setting(
        None, "--inception-weights", target=EVAL,
        type=click.Path(dir_okay=False, exists=True, path_type=Path), envvar="GENBENCH_INCEPTION_WEIGHTS",
        help="torch-fidelity's Inception weights file (gives IS); else the offline port (no IS).",
    )  # fmt: skip

    def __post_init__(self) -> None:  # a name given in code becomes the typed value too
        object.__setattr__(self, "dataset", get_dataset_spec(self.dataset))

    @classmethod
    def from_options(cls, **values: Any) -> RunSettings:
        """The settings from a command's parsed options (those that are not settings are ignored)."""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})

    def without_overrides(self) -> RunSettings:
        """Where and how runs are made, without what they are (dataset and overrides): for --resume."""
        return RunSettings(**{n: getattr(self, n) for n in FIELDS if _target(n) is None and n != "dataset"})

    def overrides(self, target: str) -> dict[str, Any]:
        """The fields of ``target`` (TRAIN or EVAL) this request sets, by name."""
        return {
            name: str(value.resolve()) if isinstance(value, Path) else value  # configs hold JSON data
            for name, value in self._given().items()
            if _target(name) == target
        }

    def given_overrides(self) -> list[str]:
        """The options of the overrides that are set, as the user spells them."""
        return [option_name(name) for name in self._given() if _target(name) is not None]

    def _given(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {n: v for n, v in values.items() if v is not None and v is not False and v != ()}


def _target(name: str) -> str | None:
    return FIELDS[name].metadata["target"]


FIELDS = {f.name: f for f in dataclasses.fields(RunSettings)}


def option_name(name: str) -> str:
    """The option that sets the setting ``name`` (``--time-budget`` for time_budget_s)."""
    option = FIELDS[name].metadata["option"]
    return _declared(option).opts[0]


def _declared(option: Any) -> click.Option:
    """The click.Option a click.option decorator adds (read off a throwaway function)."""

    def probe() -> None: ...

    return option(probe).__click_params__[0]


def setting_options(*names: str):
    """The options of the named settings as one decorator, for a command that takes only some."""
    return _options(*(FIELDS[name].metadata["option"] for name in names))


# Every shared setting's option, in declaration order: the one decorator `run` and `sweep` take.
settings_options = setting_options(*(n for n, f in FIELDS.items() if f.metadata["option"] is not None))
