"""Run settings are declared once (a RunSettings field and its option) and reach every command that
makes runs the same way; run ids name the dataset; renamed options keep their former spellings."""

import dataclasses

import torch
from cli_utils import invoke, one_line_error

from genbench.bench.commands.cli import cli
from genbench.bench.engine.data import get_dataset_spec
from genbench.bench.engine.train import RunOptions
from genbench.bench.execute import run as runs
from genbench.bench.planning import plan as plans
from genbench.bench.planning.settings import EVAL, FIELDS, SET, TRAIN, RunSettings, option_name
from genbench.bench.record.results import make_run_id
from genbench.metrics.base import EvalConfig
from genbench.models.base import TrainConfig


def _params(command: str) -> dict[str, tuple[str, ...]]:
    return {p.name: tuple(p.opts) for p in cli.commands[command].params}


def test_run_and_sweep_take_every_setting_from_its_one_declaration():
    declared = {name: option_name(name) for name, f in FIELDS.items() if f.metadata["option"] is not None}
    assert {"device", "threads", "data_dir", "max_steps", "time_budget_s", "n_samples"} <= set(declared)
    for command in ("run", "sweep"):
        params = _params(command)
        for name, option in declared.items():
            assert params.get(name, ())[:1] == (option,), (command, name)


def test_each_override_names_a_field_of_the_config_it_sets():
    configs = {TRAIN: TrainConfig, EVAL: EvalConfig}
    targets = {
        name: f.metadata["target"] for name, f in FIELDS.items() if f.metadata["target"] not in (None, SET)
    }
    assert set(targets.values()) == {TRAIN, EVAL}
    for name, target in targets.items():
        assert name in {f.name for f in dataclasses.fields(configs[target])}, name


def test_overrides_split_by_config_and_resume_keeps_only_where_runs_are_made(tmp_path):
    weights = tmp_path / "w.pt"
    settings = RunSettings(device="cpu", threads=2, dataset="cifar10", max_steps=3, n_samples=9,
                           inception_weights=weights, sets=("model.latent_dim=8",))  # fmt: skip
    assert settings.overrides(TRAIN) == {"max_steps": 3}
    assert settings.overrides(EVAL) == {"n_samples": 9, "inception_weights": str(weights.resolve())}
    assert settings.given_overrides() == ["--max-steps", "--n-samples", "--set", "--inception-weights"]
    assert settings.without_overrides() == RunSettings(device="cpu", threads=2)


def test_a_request_survives_the_trip_to_the_nproc_workers(tmp_path):
    request = plans.RunRequest(
        models=("vae",), seeds=(0, 1), out=tmp_path, nproc=2,
        settings=RunSettings(device="cpu", data_dir=tmp_path / "d", dataset="fashion-mnist", lr=0.1,
                             sets=("model.latent_dim=8", "train.betas=0.5,0.9")),
    )  # fmt: skip
    assert runs.request_from_data(runs.request_data(request)) == request


def test_the_run_id_names_the_dataset_unless_it_is_mnist(tmp_path):
    assert make_run_id("vae", "quick", 0, "q") == "vae-quick-s0-q"
    assert make_run_id("vae", "quick", 0, "q", "fashion-mnist") == "vae-fashion-mnist-quick-s0-q"
    assert get_dataset_spec("mnist").id_part() is None  # the default dataset is not named
    assert get_dataset_spec("fashion-mnist").id_part() == "fashion-mnist"
    options = RunOptions(torch.device("cpu"))
    first = runs.start(plans.plan("vae", "smoke", 0), options, tmp_path, "q")
    second = runs.start(plans.plan("vae", "smoke", 0, dataset="binarized-mnist"), options, tmp_path, "q")
    assert (first.name, second.name) == ("vae-smoke-s0-q", "vae-binarized-mnist-smoke-s0-q")


def test_former_option_names_still_work_but_are_not_shown(tmp_path):
    for command, old in (("sweep", "--profiles"), ("sweep", "--datasets"), ("sweep", "--sweep"),
                         ("eval", "--results"), ("floors", "--results")):  # fmt: skip
        assert old in {o for opts in _params(command).values() for o in opts}, (command, old)
        assert old not in invoke(command, "--help").output, (command, old)
    done = invoke("sweep", "--profiles", "smoke", "--datasets", "mnist", "--sweep", "o", "--out", tmp_path,
                  "--status")  # fmt: skip
    assert "no sweep 'o'" in one_line_error(done, 1)
