"""Autoregressive Transformer: causality by gradients, exact normalization over every small binary
image, and the key/value-cache sampler against the uncached one and against the full forward pass."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genbench.models import build, get_model_class
from genbench.models.transformer import Transformer, TransformerConfig


def tiny(shape=(1, 3, 3), levels: int = 4, dtype=torch.float64, seed: int = 0) -> Transformer:
    """A small model with every parameter drawn at random (no position or value is ignored)."""
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(image_shape=shape, levels=levels, d_model=8, n_heads=2, n_layers=2))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.to(dtype).eval()


def test_registered_with_an_exact_likelihood():
    assert get_model_class("transformer") is Transformer is get_model_class("image-transformer")
    assert Transformer.likelihood == "exact" and not Transformer.can_reconstruct


@pytest.mark.parametrize("shape", [(1, 3, 3), (3, 2, 2)])
def test_output_i_depends_on_exactly_the_inputs_before_it(shape):
    """d logits_i / d x_j is zero for every j >= i and non-zero for every j < i (full attention over
    the past), in raster order with channels innermost, by gradients through the value embeddings."""
    model = tiny(shape)
    dims = math.prod(shape)
    x = torch.randint(0, 4, (8, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    seen = []

    def keep(_module, _inputs, out):
        out.retain_grad()
        seen.append(out)

    hook = model.value.register_forward_hook(keep)
    logits = model.logits(x)  # (8, D, levels)
    hook.remove()
    values = seen[0]  # (8, D, d): the embedding of each pixel value x_j, before the model shifts them
    for i in range(dims):
        values.grad = None
        logits[:, i].sum().backward(retain_graph=True)
        depends = values.grad.abs().sum((0, 2)) > 0  # (D,): on x_0 .. x_{D-1}
        assert not depends[i:].any(), f"logits {i} depend on pixel value {i} or a later one"
        assert depends[:i].all(), f"logits {i} ignore an earlier pixel value"


def test_channels_are_innermost_in_the_raster_order():
    model = tiny((3, 2, 2))
    x = torch.arange(12, dtype=torch.uint8).reshape(1, 3, 2, 2) % 4
    assert model.tokens(x)[0].tolist() == x[0].permute(1, 2, 0).flatten().tolist()
    assert model.rows.tolist() == [0] * 6 + [1] * 6 and model.cols.tolist() == [0, 0, 0, 1, 1, 1] * 2
    assert model.channels.tolist() == [0, 1, 2] * 4


@pytest.mark.parametrize("shape", [(1, 2, 2), (2, 1, 2)])
def test_normalization_over_all_binary_images_sums_to_one(shape):
    model = tiny(shape, levels=2)
    dims = math.prod(shape)
    every = torch.tensor(list(itertools.product([0, 1], repeat=dims)), dtype=torch.uint8)  # (2^D, D)
    with torch.no_grad():
        total = model.log_prob(every.reshape(-1, *shape)).double().exp().sum()
    assert abs(total.item() - 1.0) < 1e-6


def test_log_prob_is_the_sum_of_the_conditionals_and_loss_in_nats():
    model = tiny()
    x = torch.randint(0, 4, (5, 1, 3, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(x), dim=-1)  # (5, 9, 4)
        expected = sum(logp[b, t, int(x[b, 0, t // 3, t % 3])] for b in range(5) for t in range(9)) / 5
        terms = model.loss(x)
    assert torch.allclose(-terms["loss"].double(), expected.double(), atol=1e-6)
    assert torch.allclose(terms["bpd"], terms["loss"] / (9 * math.log(2)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(1, 3, 3), (3, 2, 2)])
def test_cached_sampling_equals_uncached_sampling_and_the_full_forward(dtype, shape):
    """The same seed gives the same samples with and without the cache. In float64 the arithmetic is
    bit-identical here; in float32 the cache's single-query attention sums in another order than the
    full causal pass, so logits agree to ~1e-6 (and the samples are equal for these seeds)."""
    model = tiny(shape, dtype=dtype)
    a, logits_a = model.draw(16, torch.Generator().manual_seed(3), cache=True)
    b, logits_b = model.draw(16, torch.Generator().manual_seed(3), cache=False)
    assert a.dtype == torch.uint8 and a.shape == (16, *shape) and int(a.max()) < 4
    assert torch.equal(a, b)
    with torch.no_grad():
        teacher_forced = model.logits(a)  # (16, D, levels): what each drawn token's logits must be
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    assert (logits_a - logits_b).abs().max() <= tolerance
    assert (logits_a - teacher_forced).abs().max() <= tolerance
    assert torch.equal(model.sample(16, torch.Generator().manual_seed(3)), a)


def test_rejects_wrong_inputs_and_configs():
    model, _ = build("transformer", "smoke")
    with pytest.raises(ValueError, match="uint8"):
        model.log_prob(torch.zeros(2, 1, 28, 28))
    binary = tiny((1, 2, 2), levels=2)
    with pytest.raises(ValueError, match="levels=2"):
        binary.log_prob(torch.full((1, 1, 2, 2), 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiple of n_heads"):
        TransformerConfig(d_model=10, n_heads=4)
