"""The real-data feature cache holds numbers only: torch-fidelity's numbers from arrays we extract
and store ourselves, a payload planted in the cache runs nothing, and a truncated, foreign or
mismatching cache file is recomputed with a one-line notice."""

from __future__ import annotations

import io
import json
import os
import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from reliability_utils import fast_run, metric_values, preload, status

from genbench.metrics import fidelity
from genbench.metrics.feature_cache import FeatureCache, cache_name

N = 150  # just above the mnist network's 128 feature dimensions


def blobs(n: int, seed: int) -> torch.Tensor:
    """MNIST-like uint8 (n, 1, 28, 28): bright blobs on black."""
    low = torch.rand(n, 1, 7, 7, generator=torch.Generator().manual_seed(seed))
    up = torch.nn.functional.interpolate(low, size=(28, 28), mode="bilinear", align_corners=False)
    return ((up > 0.55).float() * 255).to(torch.uint8)


@pytest.fixture(scope="module")
def net():
    return fidelity.resolve_network("mnist")


class Payload:
    """Unpickling this creates ``marker``: what `os.system` in a planted file would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Payload(marker)))


def test_scores_are_torch_fidelitys_own(net, tmp_path):
    """FID, KID, precision/recall and IS equal torch_fidelity.calculate_metrics on the same inputs,
    seed and settings, with the reference's features extracted, cached, or read from the cache."""
    generated, real = blobs(N, 0), blobs(N + 20, 1)
    expected = torch_fidelity.calculate_metrics(
        input1=fidelity.RGB8(generated), input2=fidelity.RGB8(real), fid=True, kid=True, prc=True, isc=True,
        feature_extractor=net.extractor, feature_extractor_weights_path=str(net.weights_path),
        feature_layer_fid=net.feature_layer, feature_layer_kid=net.feature_layer,
        feature_layer_prc=net.feature_layer, feature_layer_isc=net.is_layer,
        kid_subsets=fidelity.KID_SUBSETS, kid_subset_size=fidelity.kid_subset_size(N),
        isc_splits=fidelity.ISC_SPLITS, prc_neighborhood=fidelity.PRC_NEIGHBORHOOD,
        batch_size=64, rng_seed=3, cuda=False, cache=False, save_cpu_ram=True, verbose=False,
    )  # fmt: skip
    cache = FeatureCache(tmp_path, "blobs", "test", 0)
    for _ in ("extracted and cached", "read from the cache"):
        got = fidelity.run_torch_fidelity(
            generated, real, net, fid=True, kid=True, prc=True, isc=True, input2_cache=cache, seed=3,
            batch_size=64,
        )  # fmt: skip
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert expected["frechet_inception_distance"] > 1  # two different sets: the comparison means something


def test_a_payload_planted_in_the_cache_runs_nothing(tmp_path, mnist_dir, monkeypatch):
    """The issue's attack: a pickle whose loading runs code, under every name a run's cache lookup
    could use (torch-fidelity's .pt names and our .npz). Nothing runs, and the run ends done with the
    FID of a run that had a clean cache."""
    preload(mnist_dir, monkeypatch)
    marker = tmp_path / "payload-ran"
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload is live: loading it runs code
    assert marker.exists()
    marker.unlink()
    cache = tmp_path / "out" / ".cache"
    network = fidelity.resolve_network("mnist")
    stem = f"genbench-mnist-test-n130-s0-{network.sha256[:12]}-{network.extractor}"
    for name in (f"{stem}-features-128.pt", f"{stem}-features-logits.pt", f"{stem}-stat-fid-128.pt"):
        plant(cache / name, marker)  # torch-fidelity's own cache names
    plant(cache / cache_name("mnist", "test", 130, 0, network), marker)

    result, run_dir = fast_run(tmp_path / "out", "payload")
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    assert status(run_dir)["status"] == "done"
    notes = [line for line in result.output.splitlines() if "feature cache" in line]
    assert len(notes) == 1 and "unreadable" in notes[0], notes
    clean, clean_dir = fast_run(tmp_path / "clean", "clean")
    assert clean.exit_code == 0, clean.output
    assert metric_values(run_dir)["fid_mnist"] == metric_values(clean_dir)["fid_mnist"]


def _valid_file(path: Path) -> bytes:
    return path.read_bytes()


def _truncated(valid: bytes, path: Path) -> None:
    path.write_bytes(valid[: len(valid) // 2])


def _foreign(valid: bytes, path: Path) -> None:
    path.write_bytes(b"not a cache file, e.g. a copy of something else\n")


def _other_images(valid: bytes, path: Path) -> None:
    """A whole cache file, but of other images under the same name (another copy of the dataset)."""
    with np.load(io.BytesIO(valid), allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    key = json.loads(str(arrays["key"]))
    key["images_sha256"] = "0" * 64
    arrays["key"] = np.array(json.dumps(key, sort_keys=True))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def _wrong_numbers(valid: bytes, path: Path) -> None:
    """The right key, but features of another shape (a hand-edited or buggy writer)."""
    with zipfile.ZipFile(io.BytesIO(valid)) as archive:
        names = archive.namelist()
    with np.load(io.BytesIO(valid), allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    feature = next(n for n in names if n.startswith("features_128"))[: -len(".npy")]
    arrays[feature] = arrays[feature][:10]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize(
    "spoil, why",
    [(_truncated, "unreadable"), (_foreign, "unreadable"), (_other_images, "images_sha256"),
     (_wrong_numbers, "not float32")],
    ids=["truncated", "foreign", "other-images", "wrong-shape"],
)  # fmt: skip
def test_a_bad_cache_file_is_recomputed_with_a_notice(spoil, why, net, tmp_path, capsys):
    generated, real = blobs(N, 2), blobs(N, 3)
    cache = FeatureCache(tmp_path, "blobs", "test", 0)

    def scores():
        values = fidelity.fidelity_scores(generated, real, net, reference_cache=cache, seed=1)
        return {key: v.value for key, v in values.items()}

    clean = scores()
    path = tmp_path / cache_name("blobs", "test", N, 0, net)
    spoil(_valid_file(path), path)
    capsys.readouterr()
    assert scores() == clean
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and str(path) in notes[0] and why in notes[0], notes
    assert scores() == clean and not capsys.readouterr().err  # the file was replaced by a good one


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_cache_entry_that_is_not_a_file_costs_only_time(kind, net, tmp_path, capsys):
    """A folder or FIFO in a cache file's place: the scores of a clean cache, two notes (ignored,
    not written), no hang, and the entry left as it was."""
    generated, real = blobs(N, 2), blobs(N, 3)

    def scores(folder: Path):
        cache = FeatureCache(folder, "blobs", "test", 0)
        values = fidelity.fidelity_scores(generated, real, net, reference_cache=cache, seed=1)
        return {key: v.value for key, v in values.items()}

    clean = scores(tmp_path / "clean")
    path = tmp_path / "odd" / cache_name("blobs", "test", N, 0, net)
    path.parent.mkdir()
    path.mkdir() if kind == "folder" else os.mkfifo(path)
    capsys.readouterr()
    assert scores(tmp_path / "odd") == clean
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 2 and "ignoring the feature cache file" in notes[0], notes
    assert "not a regular file" in notes[1], notes
    assert path.is_dir() if kind == "folder" else stat.S_ISFIFO(os.stat(path).st_mode)
