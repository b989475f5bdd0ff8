"""Gated PixelCNN: causality without a blind spot (over pixels and over channels), exact
normalization, exact windowed sampling."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from model_utils import optimizers_for

from genbench import models
from genbench.metrics.compute import likelihood_flops, sample_flops
from genbench.models.base import build
from genbench.models.pixelcnn import PixelCNN, PixelCNNConfig


def tiny(image_size: int = 8, channels: int = 1, **overrides) -> PixelCNN:
    torch.manual_seed(0)
    fields = dict(
        image_shape=(channels, image_size, image_size),
        levels=4,
        hidden_channels=6,
        n_layers=4,
        kernel_size=3,
        first_kernel_size=3,
        head_channels=8,
    )
    return PixelCNN(PixelCNNConfig(**{**fields, **overrides}))


def receptive_field(config: PixelCNNConfig, i: int, j: int) -> torch.Tensor:
    """The earlier pixels the logits at (i, j) should depend on, derived from the kernel sizes alone:
    a full rectangle of earlier rows (vertical stack, shifted down one row) and the pixels to the left
    on the current row (horizontal stack, type A then type B). Boolean (H, W)."""
    size = config.image_shape[1]
    first, rest = config.first_kernel_size // 2, config.kernel_size // 2
    up = first + (config.n_layers - 1) * rest  # rows above row i-1 the vertical stack adds
    side = first + (config.n_layers - 1) * rest  # columns either side of j
    left = first + 1 + (config.n_layers - 1) * rest  # columns to the left on row i
    field = torch.zeros(size, size, dtype=torch.bool)
    field[max(0, i - 1 - up) : i, max(0, j - side) : j + side + 1] = True
    field[i, max(0, j - left) : j] = True
    return field


def input_gradient(model: PixelCNN, i: int, j: int, k: int, size: int) -> torch.Tensor:
    """Which inputs (C, H, W) the logits of channel k at pixel (i, j) depend on, by gradient; over a
    batch of 32 random inputs, so that no path is dead behind ReLUs that happen to be off for all."""
    channels = model.image_shape[0]
    xf = (torch.rand(32, channels, size, size, dtype=torch.float64) * 2 - 1).requires_grad_()  # as scaled
    model.network(xf)[:, :, k, i, j].sum().backward()
    return xf.grad.abs().sum(0) > 0  # (C, H, W)


@pytest.mark.parametrize("position", [(0, 0), (0, 5), (3, 3), (4, 0), (5, 7), (7, 7), (6, 1)])
def test_causal_and_no_blind_spot(position):
    model = tiny().double()
    i, j = position
    depends = input_gradient(model, i, j, 0, 8)[0]  # (H, W)
    raster = torch.arange(64).view(8, 8)
    assert not depends[raster >= i * 8 + j].any(), "logits depend on the current or a later pixel"
    assert torch.equal(depends, receptive_field(model.config, i, j))


@pytest.mark.parametrize("position", [(0, 0), (2, 3), (5, 0), (5, 5)])
@pytest.mark.parametrize("hidden", [6, 7])  # equal and unequal channel groups
def test_three_channels_follow_raster_then_rgb_order(position, hidden):
    # Channel k of pixel (i, j) sees every channel of the earlier pixels in its receptive field and,
    # of its own pixel, exactly the channels before k: R none, G the R value, B the R and G values.
    model = tiny(image_size=6, channels=3, hidden_channels=hidden, head_channels=hidden + 2).double()
    i, j = position
    field = receptive_field(model.config, i, j)  # (H, W)
    raster = torch.arange(36).view(6, 6)
    for k in range(3):
        depends = input_gradient(model, i, j, k, 6)  # (3, H, W)
        assert not depends[:, raster > i * 6 + j].any() and not depends[k:, i, j].any(), k
    # Every allowed input must be seen too. A ReLU of the head that is off for every input cuts a
    # path without breaking causality (at (0, 0) a channel group may have no input varying enough to
    # turn it on), so this half runs with leaky ones: same masks, no dead units.
    model.head[0] = model.head[2] = torch.nn.LeakyReLU(0.1)
    for k in range(3):
        depends = input_gradient(model, i, j, k, 6)  # (3, H, W)
        own = depends[:, i, j]
        assert own.tolist() == [c < k for c in range(3)], (k, own)
        others = depends.clone()
        others[:, i, j] = False
        assert torch.equal(others, field.expand(3, -1, -1)), k


def test_blind_spot_region_is_seen():
    # Stacked masked 3x3 convolutions (the original PixelCNN) reach (i - d, j + c) only for c <= d, one
    # column right per row up; the region beyond that diagonal is their blind spot. Here (3, 4)'s logits
    # must depend on (2, 7), (1, 8) and (0, 8), all in that region.
    model = tiny(image_size=10).double()
    xf = torch.rand(1, 1, 10, 10, dtype=torch.float64, requires_grad=True)
    model.network(xf)[:, :, 0, 3, 4].sum().backward()
    grad = xf.grad[0, 0].abs()
    assert grad[2, 7] > 0 and grad[1, 8] > 0 and grad[0, 8] > 0
    assert grad[3, 5:].sum() == 0 and grad[4:].sum() == 0


def all_images(channels: int, size: int, levels: int) -> torch.Tensor:
    """Every image of the given shape: levels ** (channels * size * size) of them, uint8."""
    every = list(itertools.product(range(levels), repeat=channels * size * size))
    return torch.tensor(every, dtype=torch.uint8).view(-1, channels, size, size)


@pytest.mark.parametrize(
    "channels,levels",
    [(1, 2), (1, 3), (1, 4), (3, 2)],  # binary 2x2 as the issue asks; 3 channels: 4096 images
)
def test_exact_normalization_over_all_images(channels, levels):
    model = tiny(image_size=2, channels=channels, levels=levels, n_layers=3).eval()
    with torch.no_grad():
        total = model.log_prob(all_images(channels, 2, levels)).double().exp().sum()
    assert abs(total.item() - 1.0) < 1e-5


def test_each_conditional_sums_to_one_over_the_levels():
    model = tiny(channels=3, levels=5).eval()
    x = torch.randint(0, 5, (2, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        probs = F.softmax(model.logits(x).double(), dim=1)  # (2, 5, 3, 8, 8)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 3, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("channels", [1, 3])
def test_log_prob_is_sum_of_conditionals_and_loss_in_nats(channels):
    model = tiny(channels=channels).eval()
    x = torch.randint(0, 4, (3, channels, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        logits = model.logits(x)  # (3, 4, C, 8, 8)
        # log p(x_i,c | ...) = logit of the true level - logsumexp of all levels, summed over 64 C values.
        true = (F.one_hot(x.long(), 4).permute(0, 4, 1, 2, 3) * logits).sum(1)  # (3, C, 8, 8)
        by_hand = (true - logits.logsumexp(1)).sum((1, 2, 3))  # (3,)
        torch.testing.assert_close(model.log_prob(x), by_hand)
        terms = model.loss(x)
    dims = channels * 64
    torch.testing.assert_close(terms["loss"], -by_hand.mean())
    torch.testing.assert_close(terms["bpd"], -by_hand.mean() / (dims * torch.log(torch.tensor(2.0))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [1, 3])
def test_windowed_sampling_uses_exactly_the_full_forward_logits(dtype, channels):
    # The sampler evaluates each layer only on the window that determines the new value; the logits it
    # drew every value from must be the full network's logits on the finished image.
    model = tiny(
        channels=channels, levels=5, first_kernel_size=5, kernel_size=5, n_layers=3, hidden_channels=7
    )
    model = model.to(dtype).eval()
    samples, kept = model._sample(3, torch.Generator().manual_seed(1), keep_logits=True)
    with torch.no_grad():
        full = model.logits(samples)
    torch.testing.assert_close(kept, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kernels", [(3, 3), (7, 3), (5, 5)])
def test_a_sample_costs_exactly_one_full_forward_pass(kernels):
    """Ramachandran et al.'s caching: each layer computes every output once, so the counted FLOPs of
    sampling one image are those of the network's full pass over it (the likelihood's count)."""
    model = tiny(first_kernel_size=kernels[0], kernel_size=kernels[1]).eval()
    x = model.sample(2, torch.Generator().manual_seed(0))
    assert sample_flops(model, None) == likelihood_flops(model, x[:1]) > 0


def naive_sample(model: PixelCNN, n: int, generator: torch.Generator) -> torch.Tensor:
    """Reference: one full forward pass per pixel and channel, in raster then channel order."""
    channels, size, _ = model.image_shape
    x = torch.zeros(n, channels, size, size, dtype=torch.uint8)
    with torch.no_grad():
        for i, j, k in itertools.product(range(size), range(size), range(channels)):
            probs = F.softmax(model.logits(x)[:, :, k, i, j], dim=1)  # (n, levels)
            x[:, k, i, j] = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(torch.uint8)
    return x


@pytest.mark.parametrize("channels", [1, 3])
def test_sample_matches_naive_reference_sampler(channels):
    model = tiny(image_size=5, channels=channels, levels=4).double().eval()
    fast = model.sample(4, torch.Generator().manual_seed(7))
    reference = naive_sample(model, 4, torch.Generator().manual_seed(7))
    assert torch.equal(fast, reference)


def test_sample_dtype_range_and_seeds():
    model = tiny(levels=3).eval()
    threads = torch.get_num_threads()
    a = model.sample(5, torch.Generator().manual_seed(0))
    assert torch.get_num_threads() == threads  # a model never changes process-wide settings
    b = model.sample(5, torch.Generator().manual_seed(0))
    c = model.sample(5, torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == (5, 1, 8, 8)
    assert int(a.max()) <= 2 and len(a.unique()) == 3
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loss_decreases_on_a_fixed_batch():
    model = tiny(levels=8)
    x = torch.randint(0, 8, (8, 1, 8, 8), dtype=torch.uint8)
    x[:, :, ::2] = 0  # structure a causal model can learn: even rows are blank
    opts = optimizers_for(model, lr=1e-2)
    first = model.train_step(x, opts, 0)["loss"].item()
    for step in range(25):
        last = model.train_step(x, opts, step + 1)["loss"].item()
    assert last < 0.6 * first  # toward 32 ln 8 = 66.5 nats, the odd rows' entropy, from ~130


def test_rejects_wrong_inputs_and_configs():
    model = tiny()
    with pytest.raises(ValueError, match="uint8"):
        model.log_prob(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="levels"):
        model.log_prob(torch.full((1, 1, 8, 8), 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="hidden_channels"):
        PixelCNNConfig(image_shape=(3, 8, 8), hidden_channels=2)


def test_registered_with_profiles():
    cls = models.get_model_class("pixelcnn")
    assert cls is PixelCNN and cls.likelihood == "exact" and not cls.can_reconstruct
    model, train = build("pixelcnn", "smoke")
    assert model.image_shape == (1, 28, 28) and train.max_steps == 30
    for profile in ("quick", "full"):
        config, _ = PixelCNN.profiles[profile]()
        assert config.levels == 256 and config.receptive_rows >= 8
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert model.log_prob(x).shape == (2,)
    colour, _ = build("pixelcnn", "smoke", image_shape=(3, 32, 32))
    assert colour.log_prob(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).shape == (2,)
