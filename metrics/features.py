"""Feature networks trained by this project: one small CNN classifier per dataset that has one.

Inception was trained on ImageNet and scores digits and clothes poorly; field practice for MNIST-like
data is a classifier trained on the dataset itself. Its penultimate layer (128 features, the input of
the last linear layer) feeds FID, KID and precision/recall, its 10 logits feed IS. Each network is
named by its dataset (``mnist``, ``fashion-mnist``); binarized MNIST is scored by the ``mnist``
network on its 0/255 images. The weights are committed beside this file with their SHA-256, and
``train_classifier`` re-creates them (``bench train-classifier --dataset NAME``).

The networks train without translation augmentation: real digits are centred, so a network that
had learned to ignore where a digit sits would let a generator place digits badly at no cost in FID.

torch-fidelity sees network NAME as the feature extractor "genbench-NAME", registered on import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from genbench.core.errors import UserError
from genbench.core.files import file_sha256, save_torch, write_text

FEATURE_DIM = 128
FEATURE_LAYER = str(FEATURE_DIM)  # torch-fidelity names feature layers by strings
LOGITS_LAYER = "logits"
N_CLASSES = 10
INPUT_SIZE = 28
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    """A committed feature network: the dataset it is trained on (its name) and how."""

    name: str  # the feature network's name, the metric-key suffix, and the dataset it learns
    epochs: int  # on the 55k training split
    # Test accuracy of the committed weights (train_classifier defaults: seed 0, these epochs; CPU,
    # one thread), checked by a slow test.
    trained_accuracy: float

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}_classifier.pt"

    @property
    def extractor(self) -> str:
        return f"genbench-{self.name}"

    @property
    def retrain_hint(self) -> str:
        return f"re-create them with `bench train-classifier --dataset {self.name} --out {self.weights_path}`"


CLASSIFIERS: dict[str, ClassifierSpec] = {
    spec.name: spec
    for spec in (
        ClassifierSpec("mnist", epochs=6, trained_accuracy=0.9950),
        ClassifierSpec("fashion-mnist", epochs=6, trained_accuracy=0.9291),
    )
}
MNIST = CLASSIFIERS["mnist"]
WEIGHTS_PATH = MNIST.weights_path
EPOCHS = MNIST.epochs
RETRAIN_HINT = "re-create them with `bench train-classifier --dataset NAME`"


def get_classifier_spec(name: str) -> ClassifierSpec:
    if name not in CLASSIFIERS:
        raise UserError(
            f"no classifier feature network for {name!r}; those trained here: {', '.join(CLASSIFIERS)}"
        )
    return CLASSIFIERS[name]


def _hint(weights_path: str | os.PathLike) -> str:
    """How to re-create the weights at this path (the committed file of a known network, or any)."""
    for spec in CLASSIFIERS.values():
        if Path(weights_path).name == spec.weights_path.name:
            return spec.retrain_hint
    return RETRAIN_HINT


class Classifier(nn.Module):
    """Three conv blocks (28 -> 14 -> 7 -> 3) and a 128-unit penultimate layer, for 1x28x28 images.

    Batch norm makes training fast and stable; dropout before the last layer spreads the class
    information over many of the 128 features instead of a few."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, k: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.conv = nn.Sequential(
            *block(1, 32, 5), nn.MaxPool2d(2),  # (B, 32, 14, 14)
            *block(32, 64, 3), nn.MaxPool2d(2),  # (B, 64, 7, 7)
            *block(64, 128, 3), nn.MaxPool2d(2),  # (B, 128, 3, 3)
        )  # fmt: skip
        self.penultimate = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * 3 * 3, FEATURE_DIM, bias=False),
            nn.BatchNorm1d(FEATURE_DIM),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, N_CLASSES)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: float (B, 1, 28, 28) in [0, 1]. Returns (features (B, 128), logits (B, 10))."""
        features = self.penultimate(self.conv(x - 0.5))  # (B, 128)
        return features, self.head(self.dropout(features))  # (B, 10)


def to_grey_unit(x: Tensor) -> Tensor:
    """uint8 (B, C, H, W) 0..255, C = 1 or 3 -> float grey (B, 1, 28, 28) in [0, 1]."""
    x = x.float().mean(dim=1, keepdim=True) / 255.0  # (B, 1, H, W)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(
            x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False
        )
    return x


# ---------------------------------------------------------------------------------------------------------
# Weights on disk: atomic writes, SHA-256 beside


def sha256_path(weights_path: str | os.PathLike) -> Path:
    """The checksum file beside the weights: mnist_classifier.pt -> mnist_classifier.sha256."""
    return Path(weights_path).with_suffix(".sha256")


def save_weights(model: Classifier, path: str | os.PathLike) -> str:
    """torch.save the state dict atomically and write `<sha256>  <name>` beside it (sha256sum format)."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_torch(path, state)
    sha = file_sha256(path)
    write_text(sha256_path(path), f"{sha}  {path.name}\n")
    return sha


def expected_sha256(weights_path: str | os.PathLike) -> str:
    checksum_file = sha256_path(weights_path)
    if not checksum_file.is_file():
        raise UserError(f"feature network checksum file missing: {checksum_file}; {_hint(weights_path)}")
    return checksum_file.read_text().split()[0].lower()


def verified_sha256(weights_path: str | os.PathLike) -> str:
    """The SHA-256 of the weights file, after checking it against the committed .sha256 beside it."""
    path = Path(weights_path)
    if not path.is_file():
        raise UserError(f"feature network weights missing: {path}; {_hint(path)}")
    actual, expected = file_sha256(path), expected_sha256(path)
    if actual != expected:
        raise UserError(
            f"feature network weights {path} checksum mismatch (sha256 {actual[:12]}..., expected "
            f"{expected[:12]}...); {_hint(path)}"
        )
    return actual


def load_classifier(
    weights_path: str | os.PathLike = WEIGHTS_PATH, device: str | torch.device = "cpu"
) -> Classifier:
    """The classifier in eval mode, its weights checked against their committed SHA-256."""
    verified_sha256(weights_path)
    model = Classifier()
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------
# Training


@torch.no_grad()
def classifier_accuracy(model: Classifier, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy on uint8 images (N, 1, 28, 28) 0..255."""
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        x = to_grey_unit(images[start : start + batch_size].to(device))  # (B, 1, 28, 28)
        _, logits = model(x)
        correct += (logits.argmax(dim=1) == labels[start : start + batch_size].to(device)).sum().item()
    return correct / len(images)


@contextlib.contextmanager
def _deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def train_classifier(
    data,
    out_path: str | os.PathLike = WEIGHTS_PATH,
    seed: int = 0,
    epochs: int = EPOCHS,
    batch_size: int = 128,
    lr: float = 3e-3,
    device: str | torch.device = "cpu",
    log=print,
) -> float:
    """Train a feature network on data.train (the 55k split of bench.engine.data.load_dataset; 8-bit
    images), save it to out_path with its .sha256 beside, and return its test accuracy.

    No augmentation (see the module docstring). Deterministic for a given seed, device and thread
    count: seeded initialization, data order and dropout, and deterministic kernels. AdamW with a
    one-cycle schedule."""
    device = torch.device(device)
    torch.manual_seed(seed)  # initialization and dropout
    generator = torch.Generator().manual_seed(seed)  # data order
    model = Classifier().to(device)
    train_x, train_y = data.train.to(device), data.train_labels.to(device)
    steps_per_epoch = len(train_x) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    with _deterministic():
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(train_x), generator=generator).to(device)
            total = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                _, logits = model(to_grey_unit(train_x[idx]))  # (B, 10)
                loss = F.cross_entropy(logits, train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item()
            val = classifier_accuracy(model, data.val, data.val_labels)
            log(f"epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.4f}, val accuracy {val:.4f}")
    accuracy = classifier_accuracy(model, data.test, data.test_labels)
    sha = save_weights(model, out_path)
    log(f"test accuracy {accuracy:.4f}; wrote {out_path} (sha256 {sha})")
    return accuracy


# ---------------------------------------------------------------------------------------------------------
# torch-fidelity feature extractor


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity's view of a classifier: uint8 (B, 3, H, W) 0..255 in, ('128', 'logits') out.

    torch-fidelity constructs it with its registry name ("genbench-NAME") and all of
    calculate_metrics' keyword arguments; feature_extractor_weights_path selects weights other
    than the committed ones (their .sha256 must lie beside them)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        spec = next((s for s in CLASSIFIERS.values() if s.extractor == name), MNIST)
        self.net = load_classifier(feature_extractor_weights_path or spec.weights_path)

    @staticmethod
    def get_provided_features_list():
        return FEATURE_LAYER, LOGITS_LAYER

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": LOGITS_LAYER, "fid": FEATURE_LAYER, "kid": FEATURE_LAYER, "prc": FEATURE_LAYER}[metric]

    @staticmethod
    def can_be_compiled():
        return False  # a few convolutions: compiling costs more than it saves

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 (B, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
        features, logits = self.net(to_grey_unit(x))  # (B, 128), (B, 10)
        out = {FEATURE_LAYER: features, LOGITS_LAYER: logits}
        return tuple(out[name].float() for name in self.features_list)


for _spec in CLASSIFIERS.values():
    if _spec.extractor not in FEATURE_EXTRACTORS_REGISTRY:  # the registry refuses a second registration
        register_feature_extractor(_spec.extractor, ClassifierFeatureExtractor)
