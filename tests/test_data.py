"""The dataset registry: checked files, fixed splits, binarization, CIFAR-10 through torchvision's
reader, and one-line errors for every way a data directory can be wrong."""

import hashlib
import os
import socket
import struct
import urllib.error

import pytest
import torch
from fake_cifar import fake_images, write_fake_cifar

from genbench.bench.engine import data as bench_data
from genbench.bench.engine.data import (
    DATASETS,
    MNIST_FILES,
    MNIST_SOURCE,
    UnknownDataset,
    batches,
    epoch_order,
    load_dataset,
    load_mnist,
    resolve_data_dir,
    verify,
)
from genbench.core.errors import UserError


def _write_idx(raw, n_train=20, n_test=10):
    """Valid IDX files with tiny counts; returns a checksum table for them."""
    raw.mkdir(parents=True)
    table = {}
    for name in MNIST_FILES:
        n = n_train if name.startswith("train") else n_test
        if "images" in name:
            payload = (
                struct.pack(">IIII", 2051, n, 28, 28)
                + bytes(range(256)) * (n * 784 // 256)
                + bytes(n * 784 % 256)
            )
        else:
            payload = struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n))
        (raw / name).write_bytes(payload)
        table[name] = (len(payload), hashlib.sha256(payload).hexdigest())
    return table


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """<tmp>/MNIST/raw with tiny valid IDX files, their checksums put in MNIST's table."""
    raw = tmp_path / "MNIST" / "raw"
    for name, checksum in _write_idx(raw).items():
        monkeypatch.setitem(MNIST_FILES, name, checksum)
    return raw


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    return message


def test_data_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("GENBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("GENBENCH_DATA")
    assert str(resolve_data_dir()) == "data"


def test_unknown_dataset_is_a_usage_error_listing_the_choices():
    with pytest.raises(UnknownDataset) as err:
        load_dataset("svhn")
    assert err.value.exit_code == 2
    assert all(name in one_line(err) for name in ("mnist", "fashion-mnist", "binarized-mnist", "cifar10"))


def test_missing_directory_is_one_line_error(tmp_path):
    with pytest.raises(UserError) as err:
        load_mnist(tmp_path / "nope")
    message = one_line(err)
    assert "does not exist" in message and "--data-dir" in message


def test_data_directory_that_is_a_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("not a folder")
    with pytest.raises(UserError) as err:
        load_dataset("fashion-mnist", path)
    assert "is a file, not a folder" in one_line(err) and "FashionMNIST/raw/" in one_line(err)


def test_symlink_loop(tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", loop)
    assert "symbolic link loop" in one_line(err) and str(loop) in one_line(err)
    # A loop where a file should be is named too.
    raw = tmp_path / "d" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    os.symlink(raw / "train-images-idx3-ubyte", raw / "train-images-idx3-ubyte")
    with pytest.raises(UserError) as err:
        load_mnist(tmp_path / "d", download_missing=False)
    assert "symbolic link loop" in one_line(err) and "train-images-idx3-ubyte" in one_line(err)


def test_checksum_mismatch_and_truncation_name_the_file(tiny_mnist):
    verify(tiny_mnist, MNIST_SOURCE)  # the fake files pass against their own table
    load_mnist(tiny_mnist.parent.parent, download_missing=False)
    bad = tiny_mnist / "t10k-labels-idx1-ubyte"
    original = bad.read_bytes()
    bad.write_bytes(original[:-1] + b"\x07")
    with pytest.raises(UserError) as err:
        verify(tiny_mnist, MNIST_SOURCE)
    assert "t10k-labels-idx1-ubyte" in one_line(err) and "checksum mismatch" in one_line(err)
    assert "delete it to re-download" in one_line(err)
    bad.write_bytes(original[:-3])
    with pytest.raises(UserError) as err:
        load_mnist(tiny_mnist.parent.parent, download_missing=False)
    assert "corrupt or truncated" in one_line(err) and f"expected {len(original)}" in one_line(err)


def test_missing_file_without_download_is_one_line_error(tiny_mnist):
    (tiny_mnist / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError) as err:
        load_mnist(tiny_mnist.parent.parent, download_missing=False)
    assert "train-labels-idx1-ubyte" in one_line(err) and "missing" in one_line(err)


def _failing_download(monkeypatch, tmp_path, exc):
    import torchvision

    def fetch(*args, **kwargs):
        raise exc

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fetch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GENBENCH_DATA", raising=False)
    with pytest.raises(UserError) as err:
        load_dataset("fashion-mnist")  # ./data, nothing there: tries to download
    return one_line(err)


@pytest.mark.parametrize(
    "exc",
    [
        urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution")),
        # torchvision's MNIST-family download tries every mirror and wraps their URLErrors in one
        RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\nTried https://x/, got:\n<urlopen error "
        ),
        TimeoutError("timed out"),
    ],
)
def test_no_network_is_said_when_it_is_the_network(monkeypatch, tmp_path, exc):
    message = _failing_download(monkeypatch, tmp_path, exc)
    assert "no network?" in message and "--data-dir" in message and "Fashion-MNIST" in message


@pytest.mark.parametrize(
    "exc,expected",
    [
        (PermissionError(13, "Permission denied"), "writable"),
        (urllib.error.HTTPError("https://x/", 404, "Not Found", None, None), "HTTP Error 404"),
        (RuntimeError("File not found or corrupted."), "File not found or corrupted"),
    ],
)
def test_other_download_failures_do_not_blame_the_network(monkeypatch, tmp_path, exc, expected):
    message = _failing_download(monkeypatch, tmp_path, exc)
    assert "no network" not in message and expected in message


def test_epoch_order_is_a_seeded_permutation():
    a, b = epoch_order(100, seed=3, epoch=1), epoch_order(100, seed=3, epoch=1)
    assert torch.equal(a, b) and torch.equal(a.sort().values, torch.arange(100))
    assert not torch.equal(a, epoch_order(100, seed=3, epoch=2))
    assert not torch.equal(a, epoch_order(100, seed=4, epoch=1))


def test_batches_are_index_slices():
    data = torch.arange(10).view(10, 1, 1, 1)
    order = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    got = [b.flatten().tolist() for b in batches(data, 4, order, drop_last=True)]
    assert got == [[9, 8, 7, 6], [5, 4, 3, 2]]
    assert sum(len(b) for b in batches(data, 4)) == 10
    # The rest of an epoch after a resume: only its own full batches, none empty or partial.
    assert [b.flatten().tolist() for b in batches(data, 4, order[4:], drop_last=True)] == [[5, 4, 3, 2]]


# --- binarized MNIST ---------------------------------------------------------------------------------


def _binarized(n_train=400, n_test=100):
    """binarized-mnist's own split and binarization code on synthetic 8-bit images."""
    g = torch.Generator().manual_seed(0)
    arrays = (
        torch.randint(0, 256, (n_train, 1, 28, 28), dtype=torch.uint8, generator=g),
        torch.arange(n_train) % 10,
        torch.randint(0, 256, (n_test, 1, 28, 28), dtype=torch.uint8, generator=g),
        torch.arange(n_test) % 10,
    )
    return bench_data._split(DATASETS["binarized-mnist"], arrays, "cpu"), arrays


def test_binarized_splits_are_fixed_binary_draws_of_the_intensities():
    data, (train_file, _, test_file, _) = _binarized()
    again, _ = _binarized()
    assert data.levels == 2 and data.name == "binarized-mnist"
    for split in ("train", "val", "test"):
        x = data.split(split)
        assert x.dtype == torch.uint8 and set(x.unique().tolist()) <= {0, 1}
        assert torch.equal(x, again.split(split)), "a fixed binarization (stated seeds)"
    # The test file binarized with its stated seed, pixel by pixel in file order.
    expected = torch.bernoulli(test_file.float() / 255, generator=torch.Generator().manual_seed(0))
    assert torch.equal(data.test, expected.to(torch.uint8))
    # Bernoulli(x / 255): dark pixels stay 0, white ones 1, and the mean follows the intensity.
    assert (data.test[test_file == 0] == 0).all() and (data.test[test_file == 255] == 1).all()
    assert abs(data.test.float().mean() - test_file.float().mean() / 255) < 0.01
    assert "binarization" in data.protocol() and "seed" in data.protocol()["binarization"]


def test_dynamic_binarization_is_fresh_per_step_and_the_same_on_resume():
    data, _ = _binarized()
    order = epoch_order(len(data.train), 0, 0)
    whole = list(data.training_batches(32, order, seed=5, first_step=0))
    assert len(whole) == len(data.train) // 32
    assert all(set(b.unique().tolist()) <= {0, 1} for b in whole)
    # Resumed after 4 steps: the remaining batches are exactly those of the uninterrupted epoch.
    resumed = list(data.training_batches(32, order[4 * 32 :], seed=5, first_step=4))
    assert all(torch.equal(a, b) for a, b in zip(whole[4:], resumed, strict=True))
    # Every epoch sees a new draw of the same images: another step, another binarization.
    again = list(data.training_batches(32, order, seed=5, first_step=100))
    assert not torch.equal(whole[0], again[0])
    assert (whole[0] == again[0]).float().mean() > 0.5  # same images, resampled pixels
    other_seed = next(data.training_batches(32, order, seed=6, first_step=0))
    assert not torch.equal(whole[0], other_seed)
    # Drawn from the intensities, Bernoulli(x / 255).
    intensities = data.train_intensities[order[:32]].float() / 255
    draws = torch.stack([next(data.training_batches(32, order, 0, step)) for step in range(200)]).float()
    assert (draws.mean(0) - intensities).abs().max() < 0.15


def test_eight_bit_view_for_the_feature_networks():
    data, _ = _binarized()
    eight = data.at_8bit()
    assert eight.levels == 256 and set(eight.test.unique().tolist()) <= {0, 255}
    assert torch.equal(eight.test // 255, data.test) and eight.name == "binarized-mnist"


# --- CIFAR-10 in its own format ---------------------------------------------------------------------


def test_cifar10_through_torchvisions_reader(tmp_path):
    folder = write_fake_cifar(tmp_path, per_batch=40)
    data = load_dataset("cifar10", tmp_path, verify_checksums=False)
    assert data.image_shape == (3, 32, 32) and data.levels == 256 and data.name == "cifar10"
    assert (len(data.train), len(data.val), len(data.test)) == (180, 20, 40)  # a tenth held out
    # The test batch, channel-first, exactly as written: row r of the red plane is data[:, 32r:32r+32].
    torch.testing.assert_close(data.test, torch.from_numpy(fake_images(40, 5)), rtol=0, atol=0)
    assert data.test_labels.tolist() == [(5 + i) % 10 for i in range(40)]
    # The same folder passed directly is found too.
    assert torch.equal(load_dataset("cifar10", folder, verify_checksums=False).test, data.test)
    # Without the test-only switch the synthetic files fail the checksums, naming the first.
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_1" in one_line(err) and "md5 checksum mismatch" in one_line(err)


def test_cifar10_unreadable_file_is_one_line_error(tmp_path):
    folder = write_fake_cifar(tmp_path, per_batch=10)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", tmp_path, verify_checksums=False)
    assert "cannot read CIFAR-10" in one_line(err)


def test_cli_names_match_the_registries():
    from genbench.bench.planning import cli_options
    from genbench.metrics import features, fidelity

    assert cli_options.DATASET_NAMES == tuple(DATASETS)
    assert cli_options.NETWORK_NAMES == fidelity.NETWORKS
    assert cli_options.CLASSIFIER_NAMES == tuple(features.CLASSIFIERS)
    for spec in DATASETS.values():
        for networks in spec.feature_networks.values():
            assert set(networks) <= set(fidelity.NETWORKS)


# --- the real files --------------------------------------------------------------------------------


def test_real_mnist_splits(mnist_dir):
    d = load_mnist(mnist_dir)
    assert (len(d.train), len(d.val), len(d.test)) == (55_000, 5_000, 10_000)
    assert d.train.dtype == torch.uint8 and d.train.shape[1:] == (1, 28, 28)
    again = load_mnist(mnist_dir)
    assert torch.equal(d.val, again.val)  # the split seed is fixed
    counts = torch.bincount(torch.cat([d.train_labels, d.val_labels])).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_real_fashion_mnist(mnist_dir):
    if not (mnist_dir / "FashionMNIST" / "raw").is_dir():
        pytest.skip("Fashion-MNIST not beside MNIST")
    d = load_dataset("fashion-mnist", mnist_dir, download_missing=False)
    assert (len(d.train), len(d.val), len(d.test)) == (55_000, 5_000, 10_000)
    labels = torch.cat([d.train_labels, d.val_labels])
    assert (
        torch.bincount(labels).tolist() == [6000] * 10
        and torch.bincount(d.test_labels).tolist() == [1000] * 10
    )
    # Published facts of the files (the README beside the shared copy): the mean training pixel.
    mean = torch.cat([d.train, d.val]).float().mean().item()
    assert mean == pytest.approx(72.94, abs=0.01)
