"""Datasets as a protocol: `--dataset` through plan, config.json, resume and the CLI; every family on
three channels at 32x32 and at 2 levels; per-pixel distributions that sum to one over the levels."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from cli_utils import invoke, one_line_error
from fake_cifar import write_fake_cifar
from model_utils import optimizers_for

from genbench import models
from genbench.bench.engine.data import CIFAR10_FILES, UnknownDataset
from genbench.bench.execute.run import run_all
from genbench.bench.planning.plan import RunRequest, plan, plan_from_config
from genbench.bench.planning.settings import RunSettings
from genbench.core.errors import UsageError
from genbench.models.vae import VAEConfig, discretized_logistic_log_prob

FAMILIES = sorted(models.MODELS)


# --- the plan ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset,profile,shape,levels,networks",
    [
        ("mnist", "quick", (1, 28, 28), 256, ("mnist",)),
        ("mnist", "full", (1, 28, 28), 256, ("mnist", "inception")),
        ("binarized-mnist", "quick", (1, 28, 28), 2, ("mnist",)),
        ("fashion-mnist", "smoke", (1, 28, 28), 256, ("fashion-mnist",)),
        ("cifar10", "quick", (3, 32, 32), 256, ()),
        ("cifar10", "full", (3, 32, 32), 256, ("inception",)),
        ("cifar10", "smoke", (3, 32, 32), 256, ()),
    ],
)
def test_the_dataset_decides_shape_levels_and_feature_networks(dataset, profile, shape, levels, networks):
    p = plan("vae", profile, 0, dataset=dataset)
    assert (
        p.dataset.name == dataset and p.model_config.image_shape == shape and p.model_config.levels == levels
    )
    assert p.eval_config.feature_networks == networks
    # Chosen networks stay chosen; the round trip through config.json keeps everything.
    chosen = plan("vae", profile, 0, eval_overrides={"feature_networks": ("inception",)}, dataset=dataset)
    assert chosen.eval_config.feature_networks == ("inception",)
    config = json.loads(json.dumps({"model": "vae", "profile": profile, "seed": 0, "dataset": dataset,
                                    "model_config": p.model_config, "train_config": p.train_config,
                                    "eval_config": p.eval_config}, default=lambda o: o.__dict__))  # fmt: skip
    again = plan_from_config(config)
    assert again == p and again.identity() == p.identity()


def test_identity_and_old_configs():
    assert plan("vae", "smoke", 0).identity() != plan("vae", "smoke", 0, dataset="fashion-mnist").identity()
    p = plan("vae", "smoke", 0)
    old = {"model": "vae", "profile": "smoke", "seed": 0, "model_config": p.model_config.__dict__,
           "train_config": p.train_config.__dict__, "eval_config": p.eval_config.__dict__}  # fmt: skip
    assert plan_from_config(json.loads(json.dumps(old))).dataset.name == "mnist"  # written before datasets


def test_unknown_dataset_and_resume_with_dataset_are_usage_errors(tmp_path):
    with pytest.raises(UnknownDataset, match="choose from mnist, fashion-mnist, binarized-mnist, cifar10"):
        plan("vae", "smoke", 0, dataset="imagenet")
    line = one_line_error(invoke("run", "--models", "vae", "--dataset", "imagenet"), 2)
    assert "imagenet" in line and "cifar10" in line
    with pytest.raises(UsageError, match="drop --dataset"):
        run_all(
            RunRequest(resume=tmp_path, settings=RunSettings(dataset="cifar10")), echo=lambda *a, **k: None
        )


def test_dry_run_records_the_dataset(tmp_path):
    result = invoke("run", "--models", "pixelcnn", "--dataset", "cifar10", "--profile", "full", "--dry-run")
    assert result.exit_code == 0, result.output
    (config,) = json.loads(result.output)
    assert config["dataset"] == "cifar10" and config["model_config"]["image_shape"] == [3, 32, 32]
    assert config["eval_config"]["feature_networks"] == ["inception"]


# --- every family on colour images and on binary ones --------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("shape,levels", [((3, 32, 32), 256), ((1, 28, 28), 2)])
def test_every_family_on_the_shape_and_levels_of_its_data(name, shape, levels):
    torch.manual_seed(0)
    model, cfg = models.build(name, "smoke", image_shape=shape, levels=levels)
    x = torch.randint(0, levels, (4, *shape), dtype=torch.uint8)
    out = model.train_step(x, optimizers_for(model, config=cfg), 0)
    assert torch.isfinite(out["loss"])
    model.eval()
    with torch.no_grad():
        samples = model.sample(2, generator=torch.Generator().manual_seed(0))
        assert samples.shape == (2, *shape) and samples.dtype == torch.uint8 and int(samples.max()) < levels
        if model.likelihood is not None:
            log_p = model.log_prob(x)
            assert log_p.shape == (4,) and torch.isfinite(log_p).all() and (log_p <= 1e-3).all()
        if model.can_reconstruct:
            assert model.reconstruct(x).shape == (4, *shape)


# --- per-pixel distributions over the levels --------------------------------------------------------


@pytest.mark.parametrize("levels", [2, 3, 16])
def test_vae_decoder_bins_sum_to_one_at_any_level_count(levels):
    mean = torch.linspace(-3.0, levels + 2.0, 11)
    log_scale = torch.linspace(-7.0, 3.0, 11)
    values = torch.arange(levels, dtype=torch.float32).view(-1, 1, 1)  # (L, 1, 1)
    log_p = discretized_logistic_log_prob(values, mean.view(1, -1, 1), log_scale.view(1, 1, -1), levels)
    torch.testing.assert_close(
        log_p.double().exp().sum(0), torch.ones(11, 11, dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_vae_decoder_at_two_levels_is_a_bernoulli():
    # Two bins of a logistic(mean, s) split at 1/2: P(1) = sigmoid((mean - 1/2) / s), the Bernoulli
    # likelihood of binarized MNIST, with its cross-entropy as the reconstruction term.
    g = torch.Generator().manual_seed(0)
    mean, log_scale = torch.randn(500, generator=g) * 3, torch.randn(500, generator=g) * 2
    x = torch.randint(0, 2, (500,), generator=g).float()
    logit = (mean - 0.5) * torch.exp(-log_scale)
    expected = -F.binary_cross_entropy_with_logits(logit, x, reduction="none")
    torch.testing.assert_close(
        discretized_logistic_log_prob(x, mean, log_scale, 2), expected, atol=1e-5, rtol=1e-5
    )


def test_vae_likelihood_of_every_binary_image_sums_to_one():
    # For any latent, P(x | z) over all 2^4 binary 2x2... images sums to one: the decoder is a
    # distribution over the discrete images, so the ELBO bounds a log-probability.
    torch.manual_seed(0)
    vae = models.get_model_class("vae")(
        VAEConfig(image_shape=(1, 4, 4), levels=2, latent_dim=2, channels=(2, 2), hidden=4)
    )
    every = torch.tensor(list(itertools.product(range(2), repeat=16)), dtype=torch.uint8).view(-1, 1, 4, 4)
    z = torch.randn(3, 2)
    with torch.no_grad():
        mean, log_scale = vae.decode(z)  # (3, 1, 4, 4) each
        log_p = discretized_logistic_log_prob(every[:, None].float(), mean, log_scale, 2)  # (N, 3, 1, 4, 4)
        total = log_p.flatten(2).sum(2).double().exp().sum(0)  # (3,)
    torch.testing.assert_close(total, torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)


def test_vae_decoder_starts_wide_at_every_level_count():
    # The initial scale is the same fraction of the intensity range at 256 levels and at 2, so a
    # binarized VAE starts with usable logits, not p = 1/2 everywhere.
    for levels in (2, 256):
        torch.manual_seed(0)
        vae, _ = models.build("vae", "smoke", levels=levels)
        with torch.no_grad():
            _, log_scale = vae.decode(torch.zeros(1, vae.config.latent_dim))
        scale = log_scale.exp().mean().item() / (levels - 1)
        assert 0.03 < scale < 0.2, (levels, scale)


# --- end to end through `bench run` ------------------------------------------------------------------


@pytest.fixture
def fake_cifar_dir(tmp_path, monkeypatch):
    """Synthetic CIFAR-10 files, their md5s in the registry's table for this test only, so the real
    checks and torchvision's reader both run on them."""
    folder = write_fake_cifar(tmp_path / "data", per_batch=48)
    for name in CIFAR10_FILES:
        monkeypatch.setitem(
            CIFAR10_FILES, name, (None, hashlib.md5((folder / name).read_bytes()).hexdigest())
        )
    return tmp_path / "data"


@pytest.mark.slow
def test_every_family_runs_on_three_channel_32x32_cifar_files(fake_cifar_dir, tmp_path):
    out = tmp_path / "results"
    result = invoke(
        "run", "--models", ",".join(FAMILIES), "--profile", "smoke", "--dataset", "cifar10",
        "--data-dir", fake_cifar_dir, "--out", out, "--name", "c", "--max-steps", "3", "--n-samples", "12",
        "--threads", "1", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in FAMILIES:
        run_dir = out / f"{name}-cifar10-smoke-s0-c"  # the run id names a dataset other than mnist
        doc = json.loads((run_dir / "metrics.json").read_text())
        assert doc["protocol"]["dataset"] == "cifar10" and doc["protocol"]["image_shape"] == [3, 32, 32]
        samples = torch.load(run_dir / "samples.pt", weights_only=True)
        assert samples.shape[1:] == (3, 32, 32)
        for key in ("nll_nats", "bpd"):
            entry = doc["metrics"][key]
            if entry["value"] is not None:
                assert entry["protocol"]["dims"] == 3 * 32 * 32
        # The smoke profile leaves Inception out on CIFAR-10 (seconds, not minutes, on a CPU).
        assert doc["metrics"]["fid_inception"]["value"] is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "dataset,model,network", [("binarized-mnist", "vae", "mnist"), ("fashion-mnist", "gan", "fashion-mnist")]
)
def test_real_datasets_end_to_end(dataset, model, network, mnist_dir, tmp_path):
    from genbench.metrics.published import published_for

    if not (mnist_dir / "FashionMNIST" / "raw").is_dir() and dataset == "fashion-mnist":
        pytest.skip("Fashion-MNIST not beside MNIST")
    result = invoke(
        "run", "--models", model, "--profile", "smoke", "--dataset", dataset, "--data-dir", mnist_dir,
        "--out", tmp_path, "--name", "e", "--threads", "1", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / f"{model}-{dataset}-smoke-s0-e"
    doc = json.loads((run_dir / "metrics.json").read_text())
    protocol, metrics = doc["protocol"], doc["metrics"]
    assert protocol["dataset"] == dataset and list(protocol["feature_networks"]) == [network]
    assert metrics[f"fid_{network}"]["value"] > 0  # the dataset's own feature network, offline
    other = "fashion-mnist" if network == "mnist" else "mnist"
    assert metrics[f"fid_{other}"]["value"] is None
    samples = torch.load(run_dir / "samples.pt", weights_only=True)
    assert int(samples.max()) < protocol["levels"]
    if dataset == "binarized-mnist":
        assert protocol["levels"] == 2 and "seed" in protocol["binarization"]
        assert metrics["nll_nats"]["unit"] == "nats/image" and metrics["nll_nats"]["protocol"]["levels"] == 2
        assert {e["model"] for e in published_for(protocol)} >= {"PixelCNN", "IWAE (k=50)"}


def test_the_printed_line_follows_the_protocols_network_and_unit():
    """Each run's one printed line: FID with the dataset's own network, nats per image at 2 levels."""
    from genbench.bench.execute.run import summary_line

    def entry(label, value, unit, kind=None):
        return {"label": label, "value": value, "unit": unit, "kind": kind, "protocol": {}, "estimator": None}

    metrics = {
        "bpd": entry("Bits/dim", 0.15, "bits/dim", "bound"),
        "nll_nats": entry("NLL", 81.5, "nats/image", "bound"),
        "fid_mnist": entry("FID (mnist)", 9.0, "-"),
        "fid_fashion-mnist": entry("FID (fashion-mnist)", 13.2, "-"),
    }
    report = {"run_id": "r", "seed": 0, "metrics": metrics}
    fashion = summary_line(
        report | {"protocol": {"device": "cpu", "levels": 256, "feature_networks": {"fashion-mnist": "ab"}}}
    )
    assert (
        "FID (fashion-mnist) 13.2" in fashion
        and "FID (mnist)" not in fashion
        and "Bits/dim <= 0.15" in fashion
    )
    binary = summary_line(
        report | {"protocol": {"device": "cpu", "levels": 2, "feature_networks": {"mnist": "cd"}}}
    )
    assert "NLL <= 81.5 nats/image" in binary and "Bits/dim" not in binary and "FID (mnist) 9" in binary
