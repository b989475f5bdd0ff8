"""Plug-in families: a tiny family in a package outside genbench, found through the real entry-point
mechanism (a ``*.dist-info`` folder with entry_points.txt on sys.path) or named as module:Class."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from cli_utils import invoke, one_line_error

from genbench.bench.engine.train import RunOptions
from genbench.bench.planning import plan as plans
from genbench.models import plugins
from genbench.models.base import ALIASES, MODELS, ORIGINS, get_model_class

REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = '''
"""A family outside genbench: independent per-pixel categoricals, an exact likelihood in a few lines."""
import dataclasses

import torch
from torch import nn

from genbench import GenerativeModel, TrainConfig


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    levels: int = 256


def _profile():
    schedule = TrainConfig(max_steps=20, batch_size=32, lr=0.05, val_images=64, checkpoint_every=10)
    return TinyConfig(), schedule


class TinyModel(GenerativeModel):
    likelihood = "exact"
    Config = TinyConfig
    profiles = {"smoke": _profile, "quick": _profile, "full": _profile}

    def __init__(self, config):
        super().__init__(config)
        self.logits = nn.Parameter(torch.zeros(self.dims, config.levels))  # (D, L)

    def log_prob(self, x):
        logp = self.logits.float().log_softmax(-1)  # (D, L)
        return logp[torch.arange(self.dims, device=x.device), x.flatten(1).long()].sum(1)  # (B,)

    def loss(self, x):
        return {"loss": -self.log_prob(x).mean()}

    def sample(self, n, generator=None, mode=None):
        probs = self.logits.detach().float().softmax(-1)  # (D, L)
        pixels = torch.multinomial(probs, n, replacement=True, generator=generator)  # (D, n)
        return pixels.T.reshape(n, *self.image_shape).to(torch.uint8)
'''

SELF_REGISTERING = """
from genbench import register_model
from tinypkg.model import TinyModel


@register_model("tiny2")
class TinyTwo(TinyModel):
    pass
"""

NOT_A_FAMILY = """
from genbench import GenerativeModel
from tinypkg.model import TinyConfig


class NoProfiles(GenerativeModel):
    Config = TinyConfig

    def loss(self, x):
        return {"loss": x.float().mean()}

    def sample(self, n, generator=None, mode=None):
        raise NotImplementedError
"""

HOSTILE = """
import torch

from tinypkg.model import TinyModel


class Raises(TinyModel):
    def __init__(self, config):
        raise RuntimeError("no GPU driver here")


class NoParams(TinyModel):
    def __init__(self, config):
        super().__init__(config)
        del self.logits


class WorseThanUniform(TinyModel):
    def log_prob(self, x):
        return super().log_prob(x) - 8 * self.dims  # 8 nats per pixel below what it learns: > 12 bits/dim


class FloatSamples(TinyModel):
    def sample(self, n, generator=None, mode=None):
        return super().sample(n, generator, mode).float() / 255  # (n, 1, 28, 28) in [0, 1]
"""


DISTS = {
    "tiny-plugin": "tiny = tinypkg.model:TinyModel\ntiny2 = tinypkg.selfreg\n",
    "broken-plugin": (
        "broken = tinypkg.missing:Nope\ninvalid = tinypkg.bad:NoProfiles\nexits = tinypkg.exits:X\n"
    ),
}


def write_plugins(root: Path, dists: tuple[str, ...] = tuple(DISTS)) -> Path:
    """tinypkg, and the dist-info folders that make importlib.metadata see it as installed plug-ins."""
    package = root / "tinypkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text(TINY_MODEL)
    (package / "selfreg.py").write_text(SELF_REGISTERING)
    (package / "bad.py").write_text(NOT_A_FAMILY)
    (package / "hostile.py").write_text(HOSTILE)
    (package / "exits.py").write_text("import sys\n\nsys.exit(7)\n")  # at import: must not end genbench
    for name in dists:
        info = root / f"{name.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[genbench.models]\n{DISTS[name]}")
    return root


def _importable(root: Path, monkeypatch):
    """``root`` on sys.path in this process; the registry and the loader's state restored after."""
    monkeypatch.syspath_prepend(str(root))
    saved = dict(MODELS), dict(ALIASES), dict(ORIGINS)
    monkeypatch.setattr(plugins, "_loaded", False)
    monkeypatch.setattr(plugins, "FAILURES", {})
    yield root
    for registry, before in zip((MODELS, ALIASES, ORIGINS), saved, strict=True):
        registry.clear()
        registry.update(before)
    for name in [m for m in sys.modules if m == "tinypkg" or m.startswith("tinypkg.")]:
        del sys.modules[name]


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """Two installed plug-in distributions, one of them broken."""
    yield from _importable(write_plugins(tmp_path / "site"), monkeypatch)


@pytest.fixture
def package_path(tmp_path, monkeypatch):
    """tinypkg importable, but not installed as a plug-in: only --models module:Class finds it."""
    yield from _importable(write_plugins(tmp_path / "site", dists=()), monkeypatch)


def test_entry_points_load_once_and_a_broken_plugin_is_skipped_with_a_warning(plugin_path):
    with pytest.warns(plugins.PluginWarning) as caught:
        failures = plugins.load_plugins()
    assert ORIGINS["tiny"] == ORIGINS["tiny2"] == "entry point tiny-plugin"
    assert get_model_class("tiny").__name__ == "TinyModel" and get_model_class("tiny2").__name__ == "TinyTwo"
    assert "No module named 'tinypkg.missing'" in failures["broken"]
    assert "profiles lacks" in failures["invalid"] and "broken-plugin" in failures["invalid"]
    assert "SystemExit: 7" in failures["exits"]  # a plug-in calling sys.exit at import is skipped too
    assert len(caught) == 3 and all("\n" not in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plugins.load_plugins()  # once per process: no second import, no second warning
    with pytest.raises(KeyError, match="tinypkg.missing"):
        get_model_class("broken")  # named explicitly: why it is missing, not just "unknown"


def test_registry_loads_the_entry_points_when_asked_for_a_name_it_lacks(plugin_path):
    assert "tiny" not in MODELS
    with pytest.warns(plugins.PluginWarning):
        cls = get_model_class("tiny")
    assert cls.name == "tiny" and MODELS["tiny"] is cls


def test_list_shows_each_family_with_its_origin(plugin_path):
    result = invoke("list")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert lines["tiny"].endswith("[entry point tiny-plugin]") and "likelihood=exact" in lines["tiny"]
    assert lines["tiny2"].endswith("[entry point tiny-plugin]")
    assert lines["vae"].endswith("[built-in]") and "aliases=ddpm" in lines["diffusion"]
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 3 and any("'broken'" in w and "tinypkg.missing" in w for w in warned)
    assert any("'exits'" in w and "SystemExit" in w for w in warned)


def test_a_broken_plugin_named_explicitly_is_a_one_line_usage_error(plugin_path):
    error = one_line_error(invoke("run", "--models", "vae,broken", "--dry-run"), 2)
    assert "'broken'" in error and "No module named 'tinypkg.missing'" in error


def test_module_class_spec_registers_under_the_lowercased_class_name(package_path):
    result = invoke("run", "--models", "tinypkg.model:TinyModel", "--profile", "smoke", "--dry-run")
    assert result.exit_code == 0, result.output
    (config,) = json.loads(result.stdout)
    assert config["model"] == "tinymodel" and config["model_origin"] == "tinypkg.model:TinyModel"
    assert plugins.load_spec("tinypkg.model:TinyModel") == "tinymodel"  # the same class: no second entry
    assert ORIGINS["tinymodel"] == "tinypkg.model:TinyModel"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("tinypkg.nothere:Model", "cannot import tinypkg.nothere (ModuleNotFoundError"),
        ("tinypkg.model:Nope", "has no attribute 'Nope'"),
        ("tinypkg.model:TinyConfig", "is not a GenerativeModel subclass"),
        ("tinypkg.bad:NoProfiles", "profiles lacks ['full', 'quick', 'smoke']"),
        ("tinypkg.model:", "expected package.module:ClassName"),
    ],
)
def test_bad_specs_are_one_line_usage_errors(package_path, spec, needle):
    assert needle in one_line_error(invoke("run", "--models", spec, "--dry-run"), 2)
    assert not any(cls.__module__.startswith("tinypkg") for cls in MODELS.values())


def test_a_spec_family_is_imported_again_only_where_the_user_names_it(package_path, monkeypatch):
    """config.json records "model_origin"; a new process (here: the registry and the module
    forgotten) never imports a module a file names, but says how to load it: GENBENCH_PLUGINS."""
    plan = plans.plan("tinypkg.model:TinyModel", "smoke", 0)
    config = plans.describe(plan, RunOptions(device=__import__("torch").device("cpu")))
    for registry in (MODELS, ORIGINS):
        del registry["tinymodel"]
    for name in [m for m in sys.modules if m.startswith("tinypkg")]:
        del sys.modules[name]
    monkeypatch.setattr(plugins, "_loaded", False)
    with pytest.raises(KeyError, match="set GENBENCH_PLUGINS=tinypkg.model:TinyModel"):
        plans.plan_from_config(config)
    assert "tinypkg.model" not in sys.modules
    for hostile in ({**config, "model": "tinypkg.model:TinyModel"}, {**config, "model": 7}):
        with pytest.raises(KeyError, match="is not the name of a model family"):
            plans.plan_from_config(hostile)
    assert "tinypkg.model" not in sys.modules
    monkeypatch.setenv(plugins.ENV_VAR, "tinypkg.model:TinyModel")
    monkeypatch.setattr(plugins, "_loaded", False)
    again = plans.plan_from_config(config)
    assert again.model == "tinymodel" and again.identity() == plan.identity()
    assert MODELS["tinymodel"].__module__ == "tinypkg.model"


@pytest.mark.parametrize(
    ("cls", "needle"),
    [
        ("Raises", "building it raised RuntimeError: no GPU driver here"),
        ("NoParams", "has no parameters to train"),
        ("FloatSamples", "returned torch.float32 (130, 1, 28, 28) (floats in [0, 1]: return (x * 255)"),
    ],
)
def test_a_hostile_plugin_fails_its_run_in_one_line(package_path, cls, needle, tmp_path, monkeypatch):
    """A plug-in whose __init__ raises, that has nothing to train, or that samples floats: exit 1, one
    line naming the family and what it did, and the run folder left failed with that reason."""
    from conftest import fake_mnist
    from reliability_utils import status

    from genbench.bench.execute import run as runs

    monkeypatch.setattr(runs, "load_dataset", lambda *args, **kwargs: fake_mnist())
    spec = f"tinypkg.hostile:{cls}"
    args = ("--profile", "smoke", "--n-samples", 130, "--threads", 1, "--no-progress", "--name", "h")
    error = one_line_error(invoke("run", "--models", spec, "--out", tmp_path, *args), 1)
    assert needle in error and f"model family '{cls.lower()}' ({spec})" in error, error
    (run_dir,) = tmp_path.glob(f"{cls.lower()}-smoke-s0-h")
    assert status(run_dir)["status"] == "failed" and needle in status(run_dir)["reason"]
    assert not (run_dir / "metrics.json").exists()


def test_a_family_worse_than_a_uniform_coder_after_training_fails_its_run(
    package_path, tmp_path, monkeypatch
):
    """Trained, yet its exact likelihood is worse than 1.5 times the 8 bits/dim of a uniform coder: the
    run ends failed with one line saying so (it would otherwise end done, and be ranked)."""
    from conftest import fake_mnist
    from reliability_utils import status

    from genbench.bench.execute import run as runs

    monkeypatch.setattr(runs, "load_dataset", lambda *args, **kwargs: fake_mnist(n_test=256))
    args = ("--profile", "smoke", "--n-samples", 130, "--threads", 1, "--no-progress", "--name", "u")
    error = one_line_error(
        invoke("run", "--models", "tinypkg.hostile:WorseThanUniform", "--out", tmp_path, *args), 1
    )
    assert "after training is worse than a uniform coder's 8 bits/dim (256 levels)" in error, error
    run_dir = tmp_path / "worsethanuniform-smoke-s0-u"
    assert status(run_dir)["status"] == "failed" and "uniform coder" in status(run_dir)["reason"]
    assert not (run_dir / "metrics.json").exists()


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.mark.slow
def test_entry_point_family_trains_on_smoke_in_a_fresh_process(tmp_path, mnist_dir):
    root = write_plugins(tmp_path / "site", dists=("tiny-plugin",))
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "genbench.bench.commands.cli", "run", "--models", "tiny", "--profile", "smoke",
         "--data-dir", str(mnist_dir), "--out", str(out), "--name", "t", "--threads", "1", "--no-progress"],
        env=_env(root), cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_dir = out / "tiny-smoke-s0-t"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    assert json.loads((run_dir / "config.json").read_text())["model_origin"] == "entry point tiny-plugin"
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert metrics["bpd"]["kind"] == "exact" and 0 < metrics["bpd"]["value"] < 8
    assert metrics["fid_mnist"]["value"] is not None


@pytest.mark.slow
def test_contract_tests_run_against_an_entry_point_plugin(tmp_path):
    """The documented command: GENBENCH_PLUGINS names the plug-in, -k selects its cases."""
    root = write_plugins(tmp_path / "site", dists=("tiny-plugin",))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "tests" / "test_contract.py"), "-k", "tiny", "-q",
         "-p", "no:cacheprovider"],
        env={**_env(root), "GENBENCH_PLUGINS": "tiny"}, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (
        done.stdout + done.stderr
    )  # 5: nothing collected, i.e. the plug-in not loaded
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= 10, (
        done.stdout
    )  # tiny and tiny2, each through every contract test
