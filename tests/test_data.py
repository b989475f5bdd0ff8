import hashlib
import struct

import pytest
import torch

from genbench.bench import data as bench_data
from genbench.bench.data import MNIST_FILES, batches, epoch_order, load_mnist, resolve_data_dir, verify
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


def test_data_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("GENBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("GENBENCH_DATA")
    assert str(resolve_data_dir()) == "data"


def test_missing_directory_is_one_line_error(tmp_path):
    with pytest.raises(UserError) as err:
        load_mnist(tmp_path / "nope")
    message = str(err.value)
    assert "\n" not in message and "does not exist" in message and "--data-dir" in message


def test_checksum_mismatch_names_the_file(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    table = _write_idx(raw)
    monkeypatch.setattr(bench_data, "MNIST_FILES", table)
    verify(raw)  # the fake files pass against their own table
    bad = raw / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-1] + b"\x07")
    with pytest.raises(UserError) as err:
        verify(raw)
    assert "t10k-labels-idx1-ubyte" in str(err.value) and "checksum" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_without_download_is_one_line_error(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    table = _write_idx(raw)
    monkeypatch.setattr(bench_data, "MNIST_FILES", table)
    (raw / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="train-labels-idx1-ubyte"):
        load_mnist(tmp_path, download_missing=False)


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: [Errno -3] name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GENBENCH_DATA", raising=False)
    with pytest.raises(UserError) as err:
        load_mnist()  # ./data, nothing there: tries to download
    assert "no network" in str(err.value) and "--data-dir" in str(err.value)


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


def test_real_mnist_splits(mnist_dir):
    d = load_mnist(mnist_dir)
    assert (len(d.train), len(d.val), len(d.test)) == (55_000, 5_000, 10_000)
    assert d.train.dtype == torch.uint8 and d.train.shape[1:] == (1, 28, 28)
    again = load_mnist(mnist_dir)
    assert torch.equal(d.val, again.val)  # the split seed is fixed
    assert torch.bincount(torch.cat([d.train_labels, d.val_labels])).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
