"""Datasets as resident uint8 tensors: a registry of torchvision-layout folders, each checked against
known checksums of its uncompressed files and split train/validation/test with a fixed seed.

Every split lives on the training device as one uint8 tensor (N, C, H, W) with pixel values
0..levels-1; batches are index slices of a seeded permutation (no PIL transforms, no DataLoader
workers). The loop takes its training batches from ``Dataset.training_batches``, which is where a
dataset transforms them (dynamic binarization), so no model knows how its data was made.

Datasets (``--dataset``):

* ``mnist``: 8-bit MNIST, ``<data-dir>/MNIST/raw/``.
* ``fashion-mnist``: 8-bit Fashion-MNIST, ``<data-dir>/FashionMNIST/raw/``.
* ``binarized-mnist``: MNIST at 2 levels, as the classic nats tables use it. Training batches are
  binarized anew at every step, Bernoulli(x / 255), from a generator seeded by (run seed, step), so
  a resumed run draws what an uninterrupted one would; the test file and the training file
  (training and validation splits) are binarized once with fixed seeds (``BINARIZE_SEEDS``).
* ``cifar10``: 8-bit 32x32 colour images, ``<data-dir>/cifar-10-batches-py/``, read by
  torchvision's own CIFAR10 loader.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import pickle
import socket
import stat
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from genbench.bench.engine.image_folder import PREFIX, FolderSource, dataset_name, read_folder
from genbench.core.errors import UserError
from genbench.core.files import to_8bit

ENV_VAR = "GENBENCH_DATA"
DEFAULT_DATASET = "mnist"  # the dataset of every command that is not told another
DEFAULT_DIR = Path("data")
SPLIT_SEED = 0
N_VALIDATION = 5000  # held out of the training file (a tenth of it when the file is smaller)
# One-time binarization of binarized-mnist's files: the test file with seed 0, the training file
# (before the train/validation split) with seed 1; Bernoulli(x / 255) per pixel in file order.
BINARIZE_SEEDS = {"test": 0, "train": 1}

# name -> (size in bytes, sha256 of the uncompressed file), from the README beside the shared copy.
MNIST_FILES = {
    "train-images-idx3-ubyte": (47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": (60008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": (7840016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": (10008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
# Computed here from the uncompressed files (they match the README of ../shared/data/FashionMNIST).
# torchvision's md5s are of the upstream .gz files; a recompressed copy differs there, not here.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": (47040016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (60008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (7840016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (10008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
# name -> (size, md5): the md5s of the uncompressed batch files that torchvision's CIFAR10 knows (no
# copy is at hand here to take SHA-256 sums from); the md5 catches truncation and corruption alike.
CIFAR10_FILES = {
    "data_batch_1": (None, "c99cafc152244af753f735de768cd75f"),
    "data_batch_2": (None, "d4bba439e000b95fd0a9bffe97cbabec"),
    "data_batch_3": (None, "54ebc095f3ab1f0389bbae665268c751"),
    "data_batch_4": (None, "634d18415352ddfa80567beed471001a"),
    "data_batch_5": (None, "482c414d41f54cd18b22e5b47cb7c3cb"),
    "test_batch": (None, "40351d587109b95175f43aff81a1287e"),
    "batches.meta": (None, "5ff9c542aee3614f3951f8cda6e48888"),
}

Arrays = tuple[Tensor, Tensor, Tensor, Tensor]  # train images (N, C, H, W) uint8, labels, test images, labels


def _read_idx(folder: Path) -> Arrays:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    return (
        read_image_file(str(folder / "train-images-idx3-ubyte")).unsqueeze(1),  # (60000, 1, 28, 28)
        read_label_file(str(folder / "train-labels-idx1-ubyte")),
        read_image_file(str(folder / "t10k-images-idx3-ubyte")).unsqueeze(1),  # (10000, 1, 28, 28)
        read_label_file(str(folder / "t10k-labels-idx1-ubyte")),
    )


def _read_cifar(folder: Path) -> Arrays:
    """torchvision's CIFAR10 reader on ``folder``. Its own md5 check is switched off because
    ``verify`` has already checked the same files (or a test skipped that on synthetic files)."""
    from torchvision.datasets import CIFAR10

    unchecked = type(
        "CheckedCIFAR10",
        (CIFAR10,),
        {
            "base_folder": folder.name,
            "train_list": [[name, None] for name, _ in CIFAR10.train_list],
            "test_list": [[name, None] for name, _ in CIFAR10.test_list],
            "meta": {**CIFAR10.meta, "md5": None},
        },
    )
    splits = []
    for train in (True, False):
        loaded = unchecked(str(folder.parent), train=train)
        splits.append(torch.from_numpy(loaded.data).permute(0, 3, 1, 2).contiguous())  # (N, 3, 32, 32)
        splits.append(torch.tensor(loaded.targets, dtype=torch.int64))
    return splits[0], splits[1], splits[2], splits[3]


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset's files as torchvision lays them out under the data directory."""

    title: str  # for messages: "MNIST"
    folder: str  # under the data directory: "MNIST/raw"
    algorithm: str  # hashlib name of the checksums
    files: dict[str, tuple[int | None, str]]  # file name -> (size in bytes or None, hex digest)
    torchvision_class: str  # the torchvision.datasets class that downloads them
    read: Callable[[Path], Arrays]

    @property
    def hint(self) -> str:
        return f"pass --data-dir (or set {ENV_VAR}) to a folder holding {self.folder}/"


MNIST_SOURCE = Source("MNIST", "MNIST/raw", "sha256", MNIST_FILES, "MNIST", _read_idx)
FASHION_MNIST_SOURCE = Source(
    "Fashion-MNIST", "FashionMNIST/raw", "sha256", FASHION_MNIST_FILES, "FashionMNIST", _read_idx
)
CIFAR10_SOURCE = Source("CIFAR-10", "cifar-10-batches-py", "md5", CIFAR10_FILES, "CIFAR10", _read_cifar)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One entry of the registry: where the data comes from and the protocol it is measured under."""

    name: str
    source: Source | FolderSource
    image_shape: tuple[int, int, int]
    levels: int
    # Default feature networks per profile (EvalConfig.feature_networks None resolves to these).
    feature_networks: dict[str, tuple[str, ...]]
    description: str
    binarized: bool = False

    def json_value(self) -> str:
        """How JSON data holds it (a request handed to the --nproc workers): what --dataset took."""
        return f"{PREFIX}{self.source.path}" if isinstance(self.source, FolderSource) else self.name

    def id_part(self) -> str | None:
        """What a run id says of the dataset: its name, or nothing for the default dataset."""
        return None if self.name == DEFAULT_DATASET else self.name

    def record(self) -> dict[str, str]:
        """What config.json and the protocol record of the dataset: its name, and for a folder where
        it is and its contents' checksum (``parse_dataset`` reads the folder back from these)."""
        if isinstance(self.source, FolderSource):
            return {"dataset": self.name, "dataset_source": f"{PREFIX}{self.source.path}",
                    "dataset_sha256": self.source.sha256}  # fmt: skip
        return {"dataset": self.name}


def _networks(own: str) -> dict[str, tuple[str, ...]]:
    """The dataset's own classifier on CPU profiles; with Inception on the full (GPU) profile."""
    return {"smoke": (own,), "quick": (own,), "full": (own, "inception")}


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", MNIST_SOURCE, (1, 28, 28), 256, _networks("mnist"), "MNIST, 8-bit"),
        DatasetSpec(
            "fashion-mnist", FASHION_MNIST_SOURCE, (1, 28, 28), 256, _networks("fashion-mnist"),
            "Fashion-MNIST, 8-bit",
        ),
        # The mnist network sees the 0/1 pixels as 0/255 images.
        DatasetSpec(
            "binarized-mnist", MNIST_SOURCE, (1, 28, 28), 2, _networks("mnist"),
            "MNIST binarized: Bernoulli(x/255) anew per training batch, seeded by (run seed, step); "
            f"test and training files binarized once (seeds {BINARIZE_SEEDS['test']} and "
            f"{BINARIZE_SEEDS['train']})",
            binarized=True,
        ),
        # Inception is the field's standard network for CIFAR-10, but FID needs at least as many
        # samples as its 2048 features, which the CPU profiles (256 and 1000 samples, 0.15 s an image
        # through Inception on two cores) do not draw: they leave sample quality out.
        DatasetSpec(
            "cifar10", CIFAR10_SOURCE, (3, 32, 32), 256,
            {"smoke": (), "quick": (), "full": ("inception",)}, "CIFAR-10, 8-bit colour",
        ),
    )
}  # fmt: skip


class UnknownDataset(UserError):
    """A dataset name not in the registry: a usage error (exit status 2)."""

    exit_code = 2


def dataset_names() -> list[str]:
    return list(DATASETS)


def get_dataset_spec(name: str | DatasetSpec) -> DatasetSpec:
    """The dataset ``name`` (a registry name or ``folder:PATH``); a spec is returned as it is."""
    if isinstance(name, DatasetSpec):
        return name
    if name.startswith(PREFIX):
        return folder_spec(Path(name[len(PREFIX) :]))
    if name not in DATASETS:
        raise UnknownDataset(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}, or folder:PATH")
    return DATASETS[name]


def folder_spec(path: Path) -> DatasetSpec:
    """A folder of PNG/JPEG images as a dataset: 8-bit, its shape from its images, measured as
    CIFAR-10 is (Inception on the full profile; the CPU profiles draw too few samples for it)."""
    found = read_folder(path)
    n, shape = len(found.images), tuple(found.images.shape[1:])
    return DatasetSpec(
        dataset_name(path), FolderSource(Path(path).resolve(), found.sha256), shape, 256,
        DATASETS["cifar10"].feature_networks, f"image folder {Path(path).resolve()}, {n} images, 8-bit",
    )  # fmt: skip


def default_feature_networks(dataset: str | DatasetSpec, profile: str) -> tuple[str, ...]:
    return get_dataset_spec(dataset).feature_networks[profile]


DEFAULT_SPEC = DATASETS[DEFAULT_DATASET]


# ---------------------------------------------------------------------------------------------------------
# The resident splits


def _generator_seed(*parts: object) -> int:
    """A 63-bit seed from the parts; hashed so that no two (seed, step) pairs share a stream and none
    meets the weights' torch.manual_seed(seed)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """uint8 8-bit images -> uint8 0/1 images, each pixel Bernoulli(x / 255)."""
    return torch.bernoulli(x.float() / 255.0, generator=generator).to(torch.uint8)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The three splits, uint8 (N, C, H, W) with values 0..levels-1, and their labels (int64), on one
    device. ``train_intensities``: for dynamically binarized data, the 8-bit training images that
    every training batch is binarized anew from (``train`` holds one fixed binarization of them)."""

    train: Tensor
    val: Tensor
    test: Tensor
    train_labels: Tensor
    val_labels: Tensor
    test_labels: Tensor
    name: str = DEFAULT_DATASET  # the dataset's name (spec.name), recorded in every protocol
    levels: int = 256  # intensity levels per pixel; pixels are integers 0..levels-1
    train_intensities: Tensor | None = None
    spec: DatasetSpec | None = None  # where it was loaded from (None: made in memory, by a test)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])

    def split(self, name: str) -> Tensor:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)

    def training_batches(
        self, batch_size: int, order: Tensor, seed: int, first_step: int
    ) -> Iterator[Tensor]:
        """The full batches of an epoch in ``order``, as the model trains on them; the i-th is the
        loop's step ``first_step + i``. Dynamically binarized data draws each batch from a generator
        seeded by (seed, step): a resumed run sees exactly the batches of an uninterrupted one."""
        if self.train_intensities is None:
            yield from batches(self.train, batch_size, order, drop_last=True)
            return
        for step, x in enumerate(
            batches(self.train_intensities, batch_size, order, drop_last=True), start=first_step
        ):
            generator = torch.Generator(device=x.device).manual_seed(_generator_seed("binarize", seed, step))
            yield binarize(x, generator)  # (B, C, H, W) 0/1

    def at_8bit(self) -> Dataset:
        """The same images with pixels 0..255 (0/1 -> 0/255), for code that reads 8-bit images
        (the feature networks' real-data floors); the dynamic binarization source is dropped."""
        if self.levels == 256:
            return self
        return dataclasses.replace(
            self, train=to_8bit(self.train, self.levels), val=to_8bit(self.val, self.levels),
            test=to_8bit(self.test, self.levels), levels=256, train_intensities=None,
        )  # fmt: skip

    def protocol(self) -> dict[str, str]:
        """Protocol fields beyond name, levels and shape (metrics.json's run-level block)."""
        spec = self.spec or DATASETS.get(self.name)
        if spec is None:
            return {}
        # A folder's checksum; not its path, which differs between machines holding the same images.
        extra = {k: v for k, v in spec.record().items() if k not in ("dataset", "dataset_source")}
        return extra | ({"binarization": spec.description} if spec.binarized else {})


# ---------------------------------------------------------------------------------------------------------
# Finding and checking the files


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $GENBENCH_DATA, else ./data. An empty name is refused: it would be the current
    folder, where a download would write."""
    if data_dir is not None:
        if not str(data_dir).strip():
            raise UserError("--data-dir is empty; pass the folder that holds the data")
        return Path(data_dir)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def _stat(path: Path, what: str, hint: str) -> os.stat_result | None:
    """stat(path), None when it does not exist; a symlink loop or an unreadable path is a UserError."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{what} {path} is a symbolic link loop; {hint}") from None
        raise UserError(f"cannot open {what} {path} ({exc.strerror or exc}); {hint}") from None


def find_folder(root: Path, source: Source) -> Path:
    """torchvision's layout is <root>/<source.folder>; a path to that folder's parent or to the
    folder itself is accepted too. The default location when none holds the files."""
    probe = next(iter(source.files))
    candidates = dict.fromkeys((root / source.folder, root / Path(source.folder).name, root))
    for candidate in candidates:
        if _stat(candidate / probe, f"{source.title} file", source.hint) is not None:
            return candidate
    return root / source.folder


def raw_dir(root: Path) -> Path:
    """Where MNIST's files are under ``root`` (<root>/MNIST/raw, <root>/raw or <root> itself)."""
    return find_folder(Path(root), MNIST_SOURCE)


def _digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def verify(folder: Path, source: Source = MNIST_SOURCE) -> None:
    """Raise a one-line UserError naming the first missing, truncated or corrupt file."""
    for name, (size, digest) in source.files.items():
        path = folder / name
        st = _stat(path, f"{source.title} file", source.hint)
        if st is None or not stat.S_ISREG(st.st_mode):
            raise UserError(f"{source.title} file missing: {path}; {source.hint}")
        if size is not None and st.st_size != size:
            problem = f"{st.st_size} bytes, expected {size}"
        else:
            try:
                actual = _digest(path, source.algorithm)
            except OSError as exc:
                raise UserError(f"cannot read {path} ({exc.strerror or exc}); {source.hint}") from None
            if actual == digest:
                continue
            problem = f"{source.algorithm} checksum mismatch"
        raise UserError(
            f"{source.title} file corrupt or truncated: {path} ({problem}); delete it to re-download, "
            f"or {source.hint}"
        )


_NETWORK_ERRNOS = {
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ETIMEDOUT,
}


def _is_network_error(exc: BaseException) -> bool:
    """Whether a failed download failed for want of a network (not a full disk, not a server's answer)."""
    if isinstance(exc, urllib.error.HTTPError):
        return False  # a server answered
    if isinstance(
        exc, (urllib.error.URLError, socket.gaierror, socket.timeout, ConnectionError, TimeoutError)
    ):
        return True
    if isinstance(exc, RuntimeError):  # torchvision's MNIST wraps every mirror's URLError in one
        return "urlopen error" in str(exc)
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


def download(root: Path, source: Source = MNIST_SOURCE) -> None:
    """Fetch the files through torchvision into <root>/<source.folder>, with an actionable error."""
    import torchvision

    fetch = getattr(torchvision.datasets, source.torchvision_class)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            fetch(str(root), train=train, download=True)
    except Exception as exc:  # network, DNS, HTTP and disk errors each end in one line for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if _is_network_error(exc):
            raise UserError(
                f"could not download {source.title} into {root} ({reason}); no network? {source.hint}"
            ) from None
        if isinstance(exc, OSError) and not isinstance(exc, urllib.error.URLError):
            raise UserError(
                f"could not write {source.title} into {root} ({exc.strerror or reason}); "
                f"pass --data-dir to a writable folder, or {source.hint}"
            ) from None
        raise UserError(f"could not download {source.title} into {root} ({reason}); {source.hint}") from None


def _check_root(root: Path, hint: str) -> bool:
    """Whether the data directory exists; a file or a symlink loop in its place is a UserError."""
    st = _stat(root, "data directory", hint)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise UserError(f"data directory {root} is a file, not a folder; {hint}")
    return st is not None


# ---------------------------------------------------------------------------------------------------------
# Loading


def _split(spec: DatasetSpec, arrays: Arrays, device: str | torch.device) -> Dataset:
    train_images, train_labels, test_images, test_labels = arrays
    n = len(train_images)
    n_val = max(1, min(N_VALIDATION, n // 10))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    train_idx, val_idx = perm[:-n_val], perm[-n_val:]
    intensities = None
    if spec.binarized:
        intensities = train_images[train_idx].contiguous().to(device)
        train_images = binarize(train_images, torch.Generator().manual_seed(BINARIZE_SEEDS["train"]))
        test_images = binarize(test_images, torch.Generator().manual_seed(BINARIZE_SEEDS["test"]))
    return Dataset(
        train=train_images[train_idx].contiguous().to(device),
        val=train_images[val_idx].contiguous().to(device),
        test=test_images.contiguous().to(device),
        train_labels=train_labels[train_idx].to(device),
        val_labels=train_labels[val_idx].to(device),
        test_labels=test_labels.to(device),
        name=spec.name,
        levels=spec.levels,
        train_intensities=intensities,
        spec=spec,
    )


def load_dataset(
    name: str | DatasetSpec = DEFAULT_DATASET,
    data_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    download_missing: bool = True,
    verify_checksums: bool = True,
) -> Dataset:
    """Checked splits of dataset ``name`` on ``device``: the training file split train / validation
    (N_VALIDATION held out, fixed seed), the test file whole. ``verify_checksums=False`` is for tests
    that write small synthetic files in a dataset's own format; nothing else may skip the check."""
    spec = get_dataset_spec(name)
    source = spec.source
    if isinstance(source, FolderSource):  # a folder of images: no data directory, no download
        return _split(spec, source.read(), device)
    root = resolve_data_dir(data_dir)
    exists = _check_root(root, source.hint)
    folder = find_folder(root, source)
    missing = [n for n in source.files if _stat(folder / n, f"{source.title} file", source.hint) is None]
    if missing:
        if (data_dir is not None or os.environ.get(ENV_VAR)) and not exists:  # only ./data is created
            given = "" if data_dir is not None else f" (from ${ENV_VAR})"
            raise UserError(f"data directory does not exist: {root}{given}; {source.hint}")
        if not download_missing:
            raise UserError(f"{source.title} file missing: {folder / missing[0]}; {source.hint}")
        download(root, source)
        folder = find_folder(root, source)
    if verify_checksums:
        verify(folder, source)
    try:
        arrays = source.read(folder)
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, TypeError, pickle.UnpicklingError) as exc:
        # Checked files always parse; this is a synthetic or foreign file read without the check.
        raise UserError(f"cannot read {source.title} from {folder} ({exc}); {source.hint}") from None
    shape = tuple(arrays[0].shape[1:])
    if shape != spec.image_shape or tuple(arrays[2].shape[1:]) != shape:
        raise UserError(
            f"{source.title} in {folder} holds images of shape {shape}, expected {spec.image_shape}"
        )
    return _split(spec, arrays, device)


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    download_missing: bool = True,
) -> Dataset:
    """Checked MNIST splits on ``device``: 55k train / 5k validation (fixed seed) / 10k test."""
    return load_dataset(DEFAULT_DATASET, data_dir, device, download_missing)


# ---------------------------------------------------------------------------------------------------------
# Batches


def epoch_order(n: int, seed: int, epoch: int, device: str | torch.device = "cpu") -> Tensor:
    """The data order of one epoch: a permutation that depends only on (seed, epoch), so a resumed
    run recomputes it instead of storing it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def batches(
    data: Tensor, batch_size: int, order: Tensor | None = None, drop_last: bool = False
) -> Iterator[Tensor]:
    """Index slices of a resident tensor, in ``order`` (a permutation, or the rest of one after a
    resume) or in sequence. ``drop_last`` drops a final partial batch."""
    n = len(data) if order is None else len(order)  # a resumed epoch's order is shorter than the data
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield data[start : start + batch_size]
        else:
            yield data[order[start : start + batch_size]]
