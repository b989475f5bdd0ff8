"""The classifier feature networks (`mnist`, `fashion-mnist`): committed weights and checksums,
training, the torch-fidelity extractors, and how FID with them reacts to damaged images."""

from __future__ import annotations

import itertools
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from genbench.core.errors import UserError
from genbench.core.files import file_sha256
from genbench.metrics import features
from genbench.metrics.features import (
    CLASSIFIERS,
    FEATURE_DIM,
    WEIGHTS_PATH,
    Classifier,
    ClassifierFeatureExtractor,
    load_classifier,
    save_weights,
    sha256_path,
    train_classifier,
)

EXTRACTOR_NAME = CLASSIFIERS["mnist"].extractor  # the mnist network's torch-fidelity name


def blobs(n: int, seed: int) -> torch.Tensor:
    """Digit-sized Gaussian blobs, uint8 (n, 1, 28, 28): varied, cheap stand-ins for images."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.arange(28.0)
    centres = 6 + 16 * torch.rand(n, 3, 2, generator=g)  # (n, 3 blobs, (y, x))
    widths = 1.5 + 2.5 * torch.rand(n, 3, 1, 1, generator=g)
    dy = grid[None, None, :, None] - centres[..., 0, None, None]  # (n, 3, 28, 1)
    dx = grid[None, None, None, :] - centres[..., 1, None, None]  # (n, 3, 1, 28)
    img = torch.exp(-(dy**2 + dx**2) / (2 * widths**2)).sum(dim=1, keepdim=True)  # (n, 1, 28, 28)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_committed_weights_match_their_checksum_and_load(name):
    path = CLASSIFIERS[name].weights_path
    assert path.is_file() and sha256_path(path).is_file()
    committed = sha256_path(path).read_text().split()
    assert committed == [file_sha256(path), path.name]  # sha256sum format
    assert features.verified_sha256(path) == committed[0]
    model = load_classifier(path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    feats, logits = model(features.to_grey_unit(blobs(4, 0)))
    assert feats.shape == (4, FEATURE_DIM) and logits.shape == (4, 10)
    assert (feats >= 0).all()  # post-ReLU penultimate layer


def test_corrupted_weights_raise_checksum_error(tmp_path):
    weights = tmp_path / WEIGHTS_PATH.name
    shutil.copy(WEIGHTS_PATH, weights)
    shutil.copy(sha256_path(WEIGHTS_PATH), sha256_path(weights))
    load_classifier(weights)  # an intact copy loads
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"checksum mismatch.*bench train-classifier --dataset mnist"):
        load_classifier(weights)
    # torch-fidelity builds the extractor through the same check
    with pytest.raises(UserError, match="checksum mismatch"):
        ClassifierFeatureExtractor(EXTRACTOR_NAME, ["128"], feature_extractor_weights_path=str(weights))


def test_missing_weights_or_checksum_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="weights missing"):
        load_classifier(tmp_path / "absent.pt")
    weights = tmp_path / "w.pt"
    shutil.copy(WEIGHTS_PATH, weights)
    with pytest.raises(UserError, match="checksum file missing"):
        load_classifier(weights)


def test_save_weights_round_trip_is_atomic_and_exact(tmp_path):
    torch.manual_seed(0)
    model = Classifier().eval()
    path = tmp_path / "sub" / "net.pt"
    sha = save_weights(model, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["net.pt", "net.sha256"]  # no temp files left
    assert sha == file_sha256(path)
    x = features.to_grey_unit(blobs(3, 1))
    loaded = load_classifier(path)
    for a, b in zip(model(x), loaded(x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_each_network_has_its_own_registered_extractor_and_weights():
    for spec in CLASSIFIERS.values():
        assert FEATURE_EXTRACTORS_REGISTRY[spec.extractor] is ClassifierFeatureExtractor
    fashion = ClassifierFeatureExtractor(CLASSIFIERS["fashion-mnist"].extractor, ["128"])
    digits = ClassifierFeatureExtractor(EXTRACTOR_NAME, ["128"])
    x = blobs(3, 4).expand(-1, 3, -1, -1)
    assert not torch.equal(fashion(x)[0], digits(x)[0])  # each loads its own weights


def test_extractor_is_registered_and_sees_grey_images():
    assert FEATURE_EXTRACTORS_REGISTRY[EXTRACTOR_NAME] is ClassifierFeatureExtractor
    extractor = ClassifierFeatureExtractor(EXTRACTOR_NAME, ["logits", "128"])
    grey = blobs(5, 2)  # (5, 1, 28, 28)
    logits, feats = extractor(grey.expand(-1, 3, -1, -1))  # order of the requested features
    ref_feats, ref_logits = extractor.net(grey.float() / 255)
    torch.testing.assert_close(feats, ref_feats)
    torch.testing.assert_close(logits, ref_logits)
    # Eval-mode batch norm: an image's features do not depend on its batch.
    single = torch.cat([extractor(grey[i : i + 1].expand(-1, 3, -1, -1))[1] for i in range(5)])
    torch.testing.assert_close(single, feats, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        extractor(grey.float().expand(-1, 3, -1, -1))


def test_training_is_reproducible(tmp_path):
    fake = SimpleNamespace(
        train=blobs(64, 3), train_labels=torch.arange(64) % 10,
        val=blobs(32, 4), val_labels=torch.arange(32) % 10,
        test=blobs(32, 5), test_labels=torch.arange(32) % 10,
    )  # fmt: skip
    kwargs = dict(seed=7, epochs=1, batch_size=32, log=lambda *_: None)
    acc_a = train_classifier(fake, tmp_path / "a.pt", **kwargs)
    acc_b = train_classifier(fake, tmp_path / "b.pt", **kwargs)
    assert acc_a == acc_b
    assert file_sha256(tmp_path / "a.pt") == file_sha256(tmp_path / "b.pt")
    assert sha256_path(tmp_path / "a.pt").read_text().split()[0] == file_sha256(tmp_path / "a.pt")
    train_classifier(fake, tmp_path / "c.pt", **dict(kwargs, seed=8))
    assert file_sha256(tmp_path / "c.pt") != file_sha256(tmp_path / "a.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_committed_classifier_accuracy(name, mnist_dir):
    from genbench.bench.engine.data import load_dataset

    spec = CLASSIFIERS[name]
    data = load_dataset(name, mnist_dir, download_missing=False)
    accuracy = features.classifier_accuracy(load_classifier(spec.weights_path), data.test, data.test_labels)
    assert accuracy == pytest.approx(spec.trained_accuracy, abs=5e-4)  # as stated beside the weights


def shift(x: torch.Tensor, k: int) -> torch.Tensor:
    """Every image moved k pixels right (zero fill)."""
    out = torch.zeros_like(x)
    out[..., k:] = x[..., :-k]
    return out


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    import torchvision.transforms.functional as TF

    blurred = TF.gaussian_blur(x.float(), kernel_size=2 * round(3 * sigma) + 1, sigma=sigma)
    return blurred.round().clamp(0, 255).to(torch.uint8)


def noise(x: torch.Tensor, std: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (x.float() + std * torch.randn(x.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_fid_rises_clearly_with_shift_blur_and_noise(name, mnist_dir):
    # Test images, damaged, against themselves undamaged, beside the floor: what as many training
    # images score against them. A network that had learned to ignore translation would let a
    # generator misplace digits for free.
    from genbench.bench.engine.data import load_dataset
    from genbench.metrics import fidelity
    from genbench.metrics.base import subset_indices

    data = load_dataset(name, mnist_dir, download_missing=False)
    network = fidelity.resolve_network(name)

    def fid(images, reference):
        out = fidelity.run_torch_fidelity(
            images, reference, network, fid=True, kid=False, prc=False, isc=False
        )
        return out["frechet_inception_distance"]

    test = fidelity.reference_images(data.test, 1000, 0)
    floor = fid(data.train[subset_indices(len(data.train), 1000, 0)], test)
    for damage, strengths in ((shift, (1, 2, 4)), (blur, (0.5, 1.0, 2.0)), (noise, (16, 32, 64))):
        scores = [fid(damage(test, s), test) for s in strengths]
        assert all(b > 1.5 * a for a, b in itertools.pairwise(scores)), (damage.__name__, scores)
        assert scores[-1] > 5 * floor, (damage.__name__, floor, scores)
    # The bar, on the whole test set: a 2-pixel shift costs at least 10 times the floor.
    floor = fid(data.train[subset_indices(len(data.train), len(data.test), 0)], data.test)
    assert fid(shift(data.test, 2), data.test) >= 10 * floor
