"""Published results beside ours: a small, cited table of the literature's numbers as data.

One entry per (dataset, levels, metric, feature network, model), each with its source (paper or
repository, and table), the protocol it was measured under, and the ways that protocol differs from
genbench's. ``published_for(protocol)`` returns the entries that line up with a run's protocol block
(metrics.json's "protocol"), each marked "exact" (measured as genbench measures) or "approximate"
with the reasons. They are reference rows for a report: never averaged with our runs.

``metric`` is the metrics.json column the number lines up with: "bpd" and "nll_nats" (the exact NLL
or a negative ELBO), "iwae_nats" (an importance-weighted estimate), "fid_inception".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

FULL_TEST_SET = 10_000  # MNIST's and CIFAR-10's test sets
FULL_TRAINING = "trained on the full 60,000-image training set (genbench trains on 55,000, 5,000 held out)"


@dataclasses.dataclass(frozen=True)
class Published:
    model: str  # as the source names it
    family: str | None  # the genbench family it corresponds to, if any
    dataset: str  # bench.engine.data registry name
    levels: int
    metric: str  # metrics.json column
    value: float
    source: str  # authors, year, title, table
    url: str
    protocol: str  # how the number was measured
    spread: float | None = None  # the ± the source gives (its meaning in ``protocol``)
    feature_network: str | None = None  # sample-quality numbers only
    n_samples: int | None = None  # generated samples behind a sample-quality number
    k: int | None = None  # importance samples behind an IWAE estimate
    differences: tuple[str, ...] = ()  # how the measurement differs from genbench's, whatever the run
    notes: tuple[str, ...] = ()  # how the source's model was made (never a protocol difference)


CHEN_2019 = (
    "Chen, Behrmann, Duvenaud & Jacobsen 2019, Residual Flows for Invertible Generative Modeling, Table 2"
)
CHEN_URL = "https://arxiv.org/abs/1906.02735"
BPD_8BIT = "bits/dim of the 8-bit test set, uniform dequantization (x + u) / 256"
KATHAROPOULOS = (
    "Katharopoulos, Vyas, Pappas & Fleuret 2020, Transformers are RNNs: Fast Autoregressive Transformers "
    "with Linear Attention"
)
KATHAROPOULOS_URL = "https://arxiv.org/abs/2006.16236"
PIXEL_RNN = "van den Oord, Kalchbrenner & Kavukcuoglu 2016, Pixel Recurrent Neural Networks"
PIXEL_RNN_URL = "https://arxiv.org/abs/1601.06759"
STATIC = (
    "statically binarized MNIST (one fixed binarization, Salakhutdinov & Murray 2008, for training "
    "and test); genbench binarizes each training batch anew and the test set once (seed 0)"
)
PYTORCH_GENERATIVE = "pytorch-generative (EugenHotaj/pytorch-generative), README, Binary MNIST table"
PYTORCH_GENERATIVE_URL = "https://github.com/EugenHotaj/pytorch-generative"
BURDA = "Burda, Grosse & Salakhutdinov 2016, Importance Weighted Autoencoders"
BURDA_URL = "https://arxiv.org/abs/1509.00519"
PYTHAE = "pythae (clementchadebec/benchmark_VAE), reproducibility table"
PYTHAE_URL = "https://github.com/clementchadebec/benchmark_VAE"
DAI_WIPF = "Dai & Wipf 2019, Diagnosing and Enhancing VAE Models, Table 1"
DAI_WIPF_URL = "https://arxiv.org/abs/1903.05789"
FID_10K = "Inception FID, 10,000 generated vs 10,000 test images; mean ± std over runs"
BEST_OF_SEARCH = "the best of a large hyperparameter search"
LUCIC = (
    "GAN rows from Lucic et al. 2018 (Are GANs Created Equal?): the best configuration of a large "
    "hyperparameter search"
)

PUBLISHED: tuple[Published, ...] = (
    # --- 8-bit MNIST, bits/dim -------------------------------------------------------------------------
    *(
        Published(
            model, family, "mnist", 256, "bpd", value, CHEN_2019, CHEN_URL, BPD_8BIT,
            notes=(FULL_TRAINING,),
        )
        for model, family, value in (
            ("RealNVP", "flow", 1.06),
            ("Glow", "glow", 1.05),
            ("FFJORD", "flow", 0.99),
            ("Residual Flow", "flow", 0.97),
        )
    ),
    Published(
        "Transformer (softmax attention)", "transformer", "mnist", 256, "bpd", 0.621,
        f"{KATHAROPOULOS}, Table 1", KATHAROPOULOS_URL,
        "exact NLL of the 8-bit test set, bits/dim, of an autoregressive transformer over the 784 pixels",
        differences=(
            "the paper's own output head and training schedule, not genbench's 256-way softmax per pixel "
            "and profile; it is the softmax-attention baseline of a paper about linear attention",
        ),
        notes=(FULL_TRAINING, "8 layers, 8 heads, width 256 (genbench's full profile takes that size)"),
    ),
    # --- binarized MNIST, nats per image -----------------------------------------------------------------
    Published(
        "PixelCNN", "pixelcnn", "binarized-mnist", 2, "nll_nats", 81.30, f"{PIXEL_RNN}, Table 4",
        PIXEL_RNN_URL, "exact NLL of the test set, nats per image", differences=(STATIC,),
    ),
    Published(
        "Gated PixelCNN (reimplementation)", "pixelcnn", "binarized-mnist", 2, "nll_nats", 81.50,
        PYTORCH_GENERATIVE, PYTORCH_GENERATIVE_URL,
        "exact NLL of the test set, nats per image; a new binarization of the data every epoch",
        differences=("the test set re-binarized every epoch there (genbench: once, seed 0)",),
    ),
    Published(
        "PixelCNN (reimplementation)", "pixelcnn", "binarized-mnist", 2, "nll_nats", 81.45,
        PYTORCH_GENERATIVE, PYTORCH_GENERATIVE_URL,
        "exact NLL of the test set, nats per image; a new binarization of the data every epoch",
        differences=("the test set re-binarized every epoch there (genbench: once, seed 0)",),
    ),
    Published(
        "VAE (1 stochastic layer, k=1)", "vae", "binarized-mnist", 2, "iwae_nats", 86.76,
        f"{BURDA}, Table 1", BURDA_URL,
        "NLL estimated by IWAE with k=5000; dynamic binarization; MLP encoder and decoder", k=5000,
        notes=("MLP encoder and decoder, trained on the ELBO",),
    ),
    Published(
        "IWAE (1 stochastic layer, k=50)", "vae", "binarized-mnist", 2, "iwae_nats", 84.78,
        f"{BURDA}, Table 1", BURDA_URL,
        "NLL estimated by IWAE with k=5000; dynamic binarization", k=5000,
        notes=("trained on the k=50 IWAE bound, not the ELBO",),
    ),
    Published(
        "IWAE (k=50)", "vae", "binarized-mnist", 2, "iwae_nats", 87.10, f"{BURDA}, Appendix D",
        BURDA_URL, "NLL estimated by IWAE with k=5000; static binarization", k=5000,
        differences=(STATIC,), notes=("trained on the k=50 IWAE bound",),
    ),
    Published(
        "IWAE (k=50, reproduced)", "vae", "binarized-mnist", 2, "iwae_nats", 86.82, PYTHAE, PYTHAE_URL,
        "NLL estimated by importance sampling with 5000 samples; static binarization (\"Binary MNIST\")",
        spread=0.01, k=5000, differences=(STATIC,), notes=("trained on the k=50 IWAE bound",),
    ),
    # --- 8-bit MNIST, Inception FID ------------------------------------------------------------------------
    *(
        Published(
            model, family, "mnist", 256, "fid_inception", value, DAI_WIPF, DAI_WIPF_URL,
            FID_10K + ("; " + LUCIC if family == "gan" else ""), spread=spread,
            feature_network="inception", n_samples=10_000,
            notes=(FULL_TRAINING, *((BEST_OF_SEARCH,) if family == "gan" else ())),
        )
        for model, family, value, spread in (
            ("NS-GAN", "gan", 6.8, 0.5),
            ("WGAN", "gan", 6.7, 0.4),
            ("VAE", "vae", 16.6, 0.4),
            ("2-Stage VAE", "vae", 12.6, 1.5),
        )
    ),
    # --- CIFAR-10, bits/dim --------------------------------------------------------------------------------
    Published(
        "RealNVP", "flow", "cifar10", 256, "bpd", 3.49,
        "Dinh, Sohl-Dickstein & Bengio 2017, Density Estimation using Real NVP, Table 1",
        "https://arxiv.org/abs/1605.08803", BPD_8BIT, notes=("trained on all 50,000 training images",),
    ),
    Published(
        "Glow", "glow", "cifar10", 256, "bpd", 3.35,
        "Kingma & Dhariwal 2018, Glow: Generative Flow with Invertible 1x1 Convolutions, Table 2",
        "https://arxiv.org/abs/1807.03039", BPD_8BIT, notes=("trained on all 50,000 training images",),
    ),
    Published(
        "PixelCNN", "pixelcnn", "cifar10", 256, "bpd", 3.14, f"{PIXEL_RNN}, Table 5", PIXEL_RNN_URL,
        "exact NLL of the 8-bit test set, bits/dim", notes=("trained on all 50,000 training images",),
    ),
    Published(
        "Gated PixelCNN", "pixelcnn", "cifar10", 256, "bpd", 3.03,
        "van den Oord et al. 2016, Conditional Image Generation with PixelCNN Decoders, Table 1",
        "https://arxiv.org/abs/1606.05328", "exact NLL of the 8-bit test set, bits/dim",
        notes=("trained on all 50,000 training images",),
    ),
)  # fmt: skip


def _networks(protocol: Mapping[str, Any]) -> set[str]:
    """Feature networks of a protocol block: a {name: sha256 prefix} mapping or a list of names."""
    networks = protocol.get("feature_networks") or ()
    return set(networks)


def _differences(entry: Published, protocol: Mapping[str, Any]) -> list[str]:
    """How the entry's measurement differs from this run's: its own differences, then the counts
    (generated samples, importance samples, test images) where the run's protocol differs."""
    found = list(entry.differences)
    if entry.n_samples is not None and protocol.get("n_samples") != entry.n_samples:
        found.append(
            f"FID from {entry.n_samples:,} samples there, {protocol.get('n_samples')} here (FID falls as "
            "the sample count grows)"
        )
    if entry.k is not None and protocol.get("iwae_k") != entry.k:
        found.append(f"k={entry.k:,} importance samples there, k={protocol.get('iwae_k')} here")
    if entry.feature_network is None:
        images = protocol.get("iwae_images" if entry.metric.startswith("iwae") else "test_images")
        if images is not None and images < FULL_TEST_SET:
            found.append(f"the whole {FULL_TEST_SET:,}-image test set there, {images} test images here")
    return found


def published_for(protocol: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The published entries that line up with a metrics.json protocol block: same dataset and
    levels, and for sample-quality numbers a feature network the run used. Each as a dict: the
    Published fields, "match" ("exact" or "approximate") and "differences" (why approximate)."""
    networks = _networks(protocol)
    out = []
    for entry in PUBLISHED:
        if entry.dataset != protocol.get("dataset") or entry.levels != protocol.get("levels"):
            continue
        if entry.feature_network is not None and entry.feature_network not in networks:
            continue
        differences = _differences(entry, protocol)
        out.append(
            dataclasses.asdict(entry)
            | {"differences": differences, "match": "approximate" if differences else "exact"}
        )
    return out
