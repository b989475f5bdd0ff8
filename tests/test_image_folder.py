"""`--dataset folder:PATH`: a folder of PNG/JPEG images as a dataset, decoded once into an npz cache
keyed by the files' contents, split with a fixed seed, trained on by every family, recorded by name
(and checksum) in the protocol, and grouped apart from mnist in the report."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from cli_utils import invoke, one_line_error
from conftest import fake_mnist
from folder_utils import make_folder
from PIL import Image

from genbench import models
from genbench.bench.engine import image_folder
from genbench.bench.engine.data import get_dataset_spec, load_dataset
from genbench.bench.engine.train import RunOptions
from genbench.bench.execute import run as runs
from genbench.bench.planning import plan as plans
from genbench.bench.planning.plan import plan_from_config
from genbench.bench.planning.settings import RunSettings


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "image-folders"


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
def test_a_folder_is_a_dataset_with_its_shape_labels_and_seeded_splits(tmp_path, mode, channels):
    folder = make_folder(tmp_path / "shapes", mode, n=20, size=12)
    spec = get_dataset_spec(f"folder:{folder}")
    assert spec.name == "folder-shapes" and spec.image_shape == (channels, 12, 12) and spec.levels == 256
    assert spec.feature_networks == get_dataset_spec("cifar10").feature_networks  # inception on full
    data = load_dataset(spec)
    # 40 images: a tenth held out as the test set, a tenth of the rest as the validation set
    assert (len(data.train), len(data.val), len(data.test)) == (33, 3, 4)
    assert data.name == "folder-shapes" and data.train.dtype == torch.uint8
    # Every image exactly once in the three splits, pixel for pixel as its PNG holds it.
    everything = torch.cat([data.train, data.val, data.test])
    for png in sorted(folder.glob("*/*.png")):
        pixels = np.array(Image.open(png))
        image = torch.from_numpy(pixels if mode == "L" else pixels.transpose(2, 0, 1))
        assert int((everything == image.reshape(channels, 12, 12)).flatten(1).all(1).sum()) == 1, png
    labels = torch.cat([data.train_labels, data.val_labels, data.test_labels])
    assert labels.bincount().tolist() == [20, 20]  # disc 0, square 1 (sorted subfolder names)
    again = load_dataset(f"folder:{folder}")
    assert torch.equal(again.test, data.test) and torch.equal(again.train, data.train)  # fixed seed


def test_the_decoded_images_are_an_npz_keyed_by_content_and_a_planted_pickle_is_never_loaded(
    tmp_path, cache, monkeypatch
):
    folder = make_folder(tmp_path / "shapes", n=4, size=8)
    first = image_folder.read_folder(folder)
    (path,) = cache.glob("*.npz")
    assert path.stem == first.sha256
    with np.load(path, allow_pickle=False) as stored:  # plain arrays: no pickle needed to read it
        assert np.array_equal(stored["images"], first.images.numpy())
    monkeypatch.setattr(image_folder, "_decode", lambda *a: pytest.fail("decoded again despite the cache"))
    assert torch.equal(image_folder.read_folder(folder).images, first.images)
    monkeypatch.undo()
    os.environ["GENBENCH_CACHE"] = str(cache.parent)
    # A pickle in the cache file's place would run code if unpickled: it is refused and replaced.
    marker = tmp_path / "pickle-ran"
    payload = {"images": Planted(str(marker))}
    path.write_bytes(pickle.dumps(payload))
    assert torch.equal(image_folder.read_folder(folder).images, first.images)
    assert not marker.exists()
    with np.load(path, allow_pickle=False) as stored:
        assert str(stored["sha256"]) == first.sha256
    # A changed file is another folder: a new key.
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "disc" / "000.png")
    assert image_folder.read_folder(folder).sha256 != first.sha256


class Planted:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.mark.parametrize("problem", ["sizes", "modes", "empty", "unreadable", "cmyk"])
def test_bad_folders_are_one_line_naming_the_file(tmp_path, problem):
    folder = tmp_path / problem
    folder.mkdir()
    gray = np.zeros((8, 8), np.uint8)
    if problem != "empty":
        _save(folder / "a" / "0.png", gray)
    culprit = folder / "a" / "1.png"
    if problem == "sizes":
        _save(culprit, np.zeros((9, 8), np.uint8))
    elif problem == "modes":
        culprit = folder / "a" / "1.jpg"
        _save(culprit, np.zeros((8, 8, 3), np.uint8))
    elif problem == "unreadable":
        culprit.write_bytes(b"not an image")
    elif problem == "cmyk":
        culprit = folder / "a" / "1.jpg"
        Image.new("CMYK", (8, 8)).save(culprit)
    line = one_line_error(invoke("run", "--models", "vae", "--dataset", f"folder:{folder}", "--dry-run"), 2)
    first = folder / "a" / "0.png"
    expected = {
        "sizes": f"{culprit} is 8x9, but {first} is 8x8: a folder dataset needs images of one size",
        "modes": f"{culprit} is RGB, but {first} is greyscale (L): a folder dataset needs one mode",
        "empty": f"{folder} holds no PNG or JPEG files",
        "unreadable": f"cannot read {culprit}: not a readable image",
        "cmyk": f"{culprit} is an image of mode CMYK",
    }[problem]
    assert expected in line
    assert not (tmp_path / "results").exists()


OPTIONS = RunOptions(device=torch.device("cpu"), progress=False)


def test_vae_runs_on_an_rgb_folder_end_to_end_and_resumes_from_its_config(tmp_path):
    folder = make_folder(tmp_path / "colour shapes", "RGB")
    out = tmp_path / "results"
    # 150 one-batch epochs: the VAE below a uniform coder's 8 bits/dim, else the run fails
    result = invoke(
        "run", "--models", "vae", "--profile", "smoke", "--dataset", f"folder:{folder}", "--out", out,
        "--name", "f", "--epochs", "150", "--max-steps", "150", "--n-samples", "12", "--threads", "1",
        "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run_dir = out / "vae-folder-colour-shapes-smoke-s0-f"  # the run id names the dataset
    doc = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    protocol = doc["protocol"]
    spec = get_dataset_spec(f"folder:{folder}")
    assert protocol["dataset"] == "folder-colour-shapes" and protocol["image_shape"] == [3, 16, 16]
    assert protocol["dataset_sha256"] == spec.source.sha256 and "dataset_source" not in protocol
    assert config["dataset_source"] == f"folder:{folder.resolve()}"
    assert doc["metrics"]["bpd"]["protocol"]["dims"] == 3 * 16 * 16
    assert plan_from_config(config).dataset == spec  # --resume finds the same folder
    assert torch.load(run_dir / "samples.pt", weights_only=True).shape[1:] == (3, 16, 16)


def test_settings_carry_the_typed_dataset_and_a_folder_survives_the_trip_to_the_nproc_workers(tmp_path):
    assert RunSettings(dataset="cifar10").dataset == get_dataset_spec("cifar10")
    assert RunSettings().dataset.name == "mnist"
    spec = get_dataset_spec(f"folder:{make_folder(tmp_path / 'shapes', n=3, size=8)}")
    request = plans.RunRequest(models=("vae",), nproc=2, settings=RunSettings(device="cpu", dataset=spec))
    assert runs.request_from_data(runs.request_data(request)) == request


@pytest.mark.slow
def test_every_family_trains_on_a_grey_folder_and_the_report_groups_it_apart_from_mnist(tmp_path):
    folder = make_folder(tmp_path / "shapes", n=40)  # 80 images: the VAE's samples do not collapse
    out = tmp_path / "results"
    families = sorted(models.MODELS)
    # 20 steps: every family below a uniform coder's 8 bits/dim, else its run fails
    result = invoke(
        "run", "--models", ",".join(families), "--profile", "smoke", "--dataset", f"folder:{folder}",
        "--out", out, "--name", "g", "--epochs", "20", "--max-steps", "20", "--n-samples", "12",
        "--threads", "1", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in families:
        doc = json.loads((out / f"{name}-folder-shapes-smoke-s0-g" / "metrics.json").read_text())
        assert doc["protocol"]["dataset"] == "folder-shapes" and doc["protocol"]["image_shape"] == [1, 16, 16]
        assert doc["metrics"]["fid_inception"]["value"] is None  # Inception on the full profile only
    evaluation = {"n_samples": 12, "allow_few_samples": True}
    mnist_plan = plans.plan("flow", "smoke", 0, {"max_steps": 2}, evaluation)
    runs.execute(
        runs.start(mnist_plan, OPTIONS, out, name="m"), fake_mnist(), OPTIONS, cache_dir=out / ".cache"
    )
    reported = invoke("report", "--results", out, "--no-figures")
    assert reported.exit_code == 0, reported.output
    csv = pd.read_csv(out / "report" / "summary.csv")
    groups = csv[csv["model"] == "flow"].groupby("group")["model"].count()
    assert len(groups) == 2 and "folder-shapes" in reported.stdout  # apart from the mnist flow
