"""One import name: installed, genbench claims `genbench` and nothing else, so a project with its own
`models` package keeps it; the public API (`from genbench import ...`) and the README's example."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import genbench

REPO = Path(__file__).resolve().parents[1]


# The README's example (README.md holds the same text; the test runs README's copy when it is there).
def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=environ, capture_output=True, text=True, timeout=600
    )


def test_a_project_with_its_own_models_package_keeps_it(tmp_path):
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text('MARK = "mine"\n')
    done = _python(
        "import sys\n"
        "import genbench\n"
        "assert 'torch' not in sys.modules, 'import genbench stays light'\n"
        "import models\n"
        "import genbench.models\n"
        "assert models.MARK == 'mine' and models is not genbench.models\n"
        "assert 'vae' in genbench.models.MODELS and genbench.build is genbench.models.base.build\n"
        "print('ok')\n",
        cwd=project,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_public_api_resolves_lazily_to_the_real_objects():
    from genbench.bench.commands.external import score_samples
    from genbench.bench.engine.data import load_dataset
    from genbench.models.base import GenerativeModel, register_model

    assert sorted(genbench.__all__) == sorted(genbench._API)
    assert genbench.score_samples is score_samples and genbench.GenerativeModel is GenerativeModel
    assert genbench.register_model is register_model and genbench.load_dataset is load_dataset
    assert set(genbench.__all__) <= set(dir(genbench)) and genbench.models.MODELS
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        genbench.nothing  # noqa: B018


@pytest.mark.slow
def test_score_samples_takes_an_array_too(mnist_dir):
    images = genbench.load_dataset("mnist", mnist_dir).test[:200]  # (200, 1, 28, 28)
    scores = genbench.score_samples(images[:, 0].numpy(), data_dir=mnist_dir, device="cpu")  # (N, H, W)
    assert scores["n_samples"] == 200 and scores["fid_mnist"] > 0 and scores["fid_mnist_floor"] > 0
    assert scores["dataset"] == "mnist" and "bpd" not in scores  # the computed metrics only


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    found = [b for b in blocks if "score_samples(" in b]
    assert found, "README.md lost its score_samples example"
    return found[0]


@pytest.mark.slow
def test_the_readme_example_scores_a_npz(tmp_path, mnist_dir, monkeypatch, capsys):
    test = genbench.load_dataset("mnist", mnist_dir).test
    images = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[:1000]]
    np.savez(tmp_path / "samples.npz", images=images.numpy())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENBENCH_DATA", str(mnist_dir))
    exec(compile(readme_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    found = re.fullmatch(r"FID (\d+\.\d+) \(1000 samples\), real-data (\d+\.\d+)\n", out)
    assert found, out
    fid, floor = map(float, found.groups())
    assert fid < 1.5 * floor and not (tmp_path / "results").exists()  # the API writes nothing


def _sources(destination: Path) -> Path:
    """The project's files (tracked and new, as git sees them) copied: the build never writes into
    the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


@pytest.mark.slow
def test_the_installed_wheel_claims_only_genbench(tmp_path):
    source = _sources(tmp_path / "src")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("genbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"genbench", wheel.name.split("-py")[0] + ".dist-info"}
    assert "genbench/metrics/weights/mnist_classifier.pt" in names and "genbench/models/plugins.py" in names
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _python(
        "import importlib.util, sys\n"
        "import genbench\n"
        f"assert genbench.__file__.startswith({str(site)!r}), genbench.__file__\n"
        "from genbench.metrics.fidelity import resolve_network\n"
        "network = resolve_network('mnist')  # the weights found and their checksum verified\n"
        f"assert str(network.weights_path).startswith({str(site)!r})\n"
        "for name in ('models', 'bench', 'metrics', 'core'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
        "print('ok')\n",
        cwd=elsewhere,
        PYTHONPATH=str(site),
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    import_models = _python("import models", cwd=elsewhere, PYTHONPATH=str(site))
    assert "No module named 'models'" in import_models.stderr
