"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

An autoregressive model over pixels in raster order and, within a pixel, over its channels in order
(R, G, B): p(x) = prod_i prod_c p(x_i,c | x_<i, x_i,<c), each factor a ``levels``-way softmax over
intensities, so log p(x) is exact and, with ``levels = 256``, it is the 8-bit protocol's likelihood
(the probability of the discrete image equals the density of the uniformly dequantized image on the
1/256 grid).

Two stacks remove the blind spot of the original PixelCNN:

* the vertical stack sees a full rectangle of rows at and above the current row (kernel
  ``(k//2 + 1, k)``); its features reach the horizontal stack shifted down by one row, so a pixel only
  ever sees strictly earlier rows through it, all of their channels;
* the horizontal stack sees the current row to the left, kernel ``(1, w)`` whose last column is the
  current pixel. Earlier columns read every channel. At the current pixel the channels follow the
  channel masks of van den Oord et al. (2016, "Pixel Recurrent Neural Networks"): every feature map
  belongs to one image channel (contiguous groups, R then G then B), and a map of group c reads the
  current pixel's maps of groups < c in the first layer (mask type A, which with one channel
  excludes the current pixel altogether) and of groups <= c after it (type B, whose inputs by then
  carry only what came before). The 1x1 convolutions of the horizontal stack and of the output head
  are type B; the head's logits for channel c form group c.

Each layer gates its activations as tanh(a) * sigmoid(b) (both halves grouped alike) and the
horizontal stack is residual from the second layer on. Sampling runs the same layer code on the
smallest window that determines each new value (one new row of the vertical stack per image row, one
new column of the horizontal stack per pixel and channel), which is exact because the stacks are
causal; tests compare it with the full forward pass and with a naive sampler.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.models.base import GenerativeModel, TrainConfig, bits_per_dim, register_model


@dataclasses.dataclass(frozen=True)
class PixelCNNConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    levels: int = 256  # intensities per pixel; inputs are uint8 in 0..levels-1
    hidden_channels: int = 64  # feature maps per stack ("channels" is the image's channel count in base)
    n_layers: int = 7  # gated layers, the first one type A
    kernel_size: int = 3  # odd; vertical kernel (k//2+1, k), horizontal (1, k//2+1)
    first_kernel_size: int = 7  # the first layer reads the C-channel image, so a wide kernel is cheap
    head_channels: int = 128  # hidden width of the 1x1 output head

    def __post_init__(self) -> None:
        for name in ("hidden_channels", "n_layers", "head_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        channels = self.image_shape[0]
        for name in ("hidden_channels", "head_channels"):
            if getattr(self, name) < channels:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must be at least the image's {channels} channels: "
                    "each channel needs its own feature maps"
                )
        if not 2 <= self.levels <= 256:
            raise ValueError(f"levels must be in 2..256 (uint8 inputs), got {self.levels}")
        for name in ("kernel_size", "first_kernel_size"):
            k = getattr(self, name)
            if k < 3 or k % 2 == 0:
                raise ValueError(f"{name} must be odd and at least 3, got {k}")

    @property
    def receptive_rows(self) -> int:
        """How many rows above a pixel can influence it: the vertical stack reaches k//2 rows further
        up per layer and the shift into the horizontal stack adds one."""
        return 1 + self.first_kernel_size // 2 + (self.n_layers - 1) * (self.kernel_size // 2)


def gate(a: Tensor) -> Tensor:
    """tanh(first half) * sigmoid(second half) along channels: (B, 2C, ...) -> (B, C, ...)."""
    value, gate_ = a.chunk(2, dim=1)
    return torch.tanh(value) * torch.sigmoid(gate_)


def shift_down(x: Tensor) -> Tensor:
    """Row r takes row r-1's values, row 0 zeros: (B, C, H, W) -> (B, C, H, W)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def channel_groups(n: int, image_channels: int) -> Tensor:
    """The image channel each of n feature maps belongs to: contiguous, near-equal groups. (n,) long"""
    return torch.arange(n) * image_channels // n


def channel_mask(out_groups: Tensor, in_groups: Tensor, own: bool) -> Tensor:
    """(out, in) 0/1: which inputs at the current pixel an output may read: those of earlier image
    channels, and with ``own`` (type B) those of its own channel too (type A without)."""
    earlier = out_groups[:, None] - in_groups[None, :]  # (out, in)
    return (earlier >= 0 if own else earlier > 0).float()


class RowConv(nn.Conv2d):
    """A (1, width) convolution over the current pixel (its last kernel column, given left-only
    padding) and the width-1 pixels to its left. Those read every input channel; the current pixel
    reads only what ``mask`` (out, in) allows."""

    def __init__(self, in_channels: int, out_channels: int, width: int, mask: Tensor) -> None:
        super().__init__(in_channels, out_channels, (1, width))
        full = torch.ones(out_channels, in_channels, 1, width)
        full[:, :, 0, -1] = mask
        self.register_buffer("mask", full, persistent=False)  # derived from the config, not learned

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias)


class GatedLayer(nn.Module):
    """One layer of both stacks. ``first`` makes it type A (the current pixel's own and later
    channels are excluded, and there is no residual because its input is the image itself).
    ``in_groups``: the image channel of each input map."""

    def __init__(
        self, in_groups: Tensor, channels: int, image_channels: int, kernel_size: int, first: bool
    ) -> None:
        super().__init__()
        in_channels = len(in_groups)
        self.first = first
        self.half = kernel_size // 2
        self.width = self.half + 1 + (1 if first else 0)  # type A reaches one column further left
        groups = channel_groups(channels, image_channels)  # (C,)
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (self.half + 1, kernel_size))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_conv = RowConv(
            in_channels,
            2 * channels,
            self.width,
            channel_mask(torch.cat([groups, groups]), in_groups, not first),
        )
        self.h_out = RowConv(channels, channels, 1, channel_mask(groups, groups, own=True))

    def vertical(self, v: Tensor, pad: bool = True) -> tuple[Tensor, Tensor]:
        """Next vertical features and the pre-activation the horizontal stack reads.
        Output row r depends on input rows r-half..r only. ``pad`` False: ``v`` already holds the
        ``half`` rows above its first output row (zeros above the image), as the sampler's cache does."""
        pre = self.v_conv(F.pad(v, (self.half, self.half, self.half if pad else 0, 0)))  # (B, 2C, H', W)
        return gate(pre), pre

    def link(self, pre: Tensor) -> Tensor:
        """The vertical pre-activation as the horizontal stack sees it: one row down, so row i reads
        rows < i only."""
        return self.v_to_h(shift_down(pre))  # (B, 2C, H, W)

    def horizontal(self, h: Tensor, link: Tensor, pad: bool = True) -> Tensor:
        """Next horizontal features. Output column c depends on input columns c-width+1..c (column c
        through the channel mask) and on ``link`` at column c. ``pad`` False: ``h`` already holds the
        ``left_reach`` columns before its first output column (the sampler's one-column window)."""
        pre = self.h_conv(F.pad(h, (self.width - 1 if pad else 0, 0, 0, 0))) + link  # (B, 2C, H, W')
        out = self.h_out(gate(pre))  # (B, C, H, W')
        return out if self.first else h[..., h.shape[-1] - out.shape[-1] :] + out

    @property
    def left_reach(self) -> int:
        """Columns to the left of c that ``horizontal`` reads to produce column c."""
        return self.width - 1


def _smoke() -> tuple[PixelCNNConfig, TrainConfig]:
    return (
        PixelCNNConfig(hidden_channels=8, n_layers=2, head_channels=16),
        TrainConfig(max_steps=30, batch_size=32, val_images=256, checkpoint_every=10, log_every=5),
    )


# Sized for 2 CPU cores: 600 steps of 32 images took 240 CPU-seconds on one thread and reached
# 1.16-1.17 bits/dim on 2000 test images (two seeds). A wide first kernel is nearly free and
# gave the most digit-like samples; batch 32 beat batch 64 for the same compute.
def _quick() -> tuple[PixelCNNConfig, TrainConfig]:
    return (
        PixelCNNConfig(hidden_channels=32, n_layers=5, first_kernel_size=13, head_channels=64),
        TrainConfig(
            epochs=1,
            batch_size=32,
            lr=2e-3,
            max_steps=600,
            val_images=1000,
            checkpoint_every=200,
            log_every=20,
        ),
    )


# Paper-grade depth for a GPU; 5-wide kernels make the receptive field (1 + 3 + 14 * 2 = 32 rows
# up, 31 columns either side) cover the whole 28x28 image.
def _full() -> tuple[PixelCNNConfig, TrainConfig]:
    return (
        PixelCNNConfig(hidden_channels=128, n_layers=15, kernel_size=5, head_channels=256),
        TrainConfig(epochs=30, batch_size=128, lr=1e-3, val_images=5000, checkpoint_every=2000),
    )


@register_model("pixelcnn", aliases=("gated-pixelcnn",))
class PixelCNN(GenerativeModel):
    likelihood = "exact"
    can_reconstruct = False
    Config = PixelCNNConfig
    profiles = {"smoke": _smoke, "quick": _quick, "full": _full}

    def __init__(self, config: PixelCNNConfig) -> None:
        super().__init__(config)
        c, channels, levels = config.hidden_channels, config.image_shape[0], config.levels
        image_groups = torch.arange(channels)  # image channel k is group k
        hidden_groups = channel_groups(c, channels)
        self.layers = nn.ModuleList(
            [GatedLayer(image_groups, c, channels, config.first_kernel_size, first=True)]
            + [
                GatedLayer(hidden_groups, c, channels, config.kernel_size, first=False)
                for _ in range(config.n_layers - 1)
            ]
        )
        head_groups = channel_groups(config.head_channels, channels)
        logit_groups = torch.arange(channels * levels) // levels  # channel k's levels logits are group k
        self.head = nn.Sequential(
            nn.ReLU(),
            RowConv(c, config.head_channels, 1, channel_mask(head_groups, hidden_groups, own=True)),
            nn.ReLU(),
            RowConv(
                config.head_channels, channels * levels, 1, channel_mask(logit_groups, head_groups, own=True)
            ),
        )

    # ----------------------------------------------------------------------------- likelihood

    def scale(self, x: Tensor) -> Tensor:
        """uint8 intensities 0..levels-1 -> float in [-1, 1], the network's input."""
        return x.float() * (2.0 / (self.config.levels - 1)) - 1.0

    def _logits_of(self, h: Tensor) -> Tensor:
        """The head on horizontal features (B, hidden, H, W) -> logits (B, levels, C, H, W)."""
        b, _, height, width = h.shape
        out = self.head(h).view(b, self.image_shape[0], self.config.levels, height, width)  # (B, C, L, H, W)
        return out.transpose(1, 2)

    def network(self, xf: Tensor) -> Tensor:
        """Logits of every pixel and channel given what precedes it: (B, C, H, W) float ->
        (B, levels, C, H, W)."""
        v = h = xf
        for layer in self.layers:
            v, pre = layer.vertical(v)
            h = layer.horizontal(h, layer.link(pre))
        return self._logits_of(h)

    def _check(self, x: Tensor) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"pixelcnn expects uint8 (B, {self.image_shape}), got {x.dtype} {tuple(x.shape)}"
            )
        # A host sync, so only for reduced level counts, where an out-of-range input is a real mistake.
        if self.config.levels < 256 and int(x.max()) >= self.config.levels:
            raise ValueError(f"inputs must be below levels={self.config.levels}; quantize them first")

    def logits(self, x: Tensor) -> Tensor:
        """(B, C, H, W) uint8 -> (B, levels, C, H, W) float32 logits."""
        self._check(x)
        # The parameters' dtype (float32 in training; tests run float64 for exact comparisons).
        return self.network(self.scale(x).to(self.head[-1].weight.dtype)).float()

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log P(x) in nats: sum over pixels and channels of log softmax at the true
        intensity. (B,)"""
        logp = F.log_softmax(self.logits(x), dim=1)  # (B, levels, C, H, W)
        return logp.gather(1, x.long().unsqueeze(1)).flatten(1).sum(1)  # (B,)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        nats = -self.log_prob(x).mean()
        return {"loss": nats, "bpd": bits_per_dim(nats.detach(), self.dims)}

    # ------------------------------------------------------------------------------- sampling

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, mode: str | None = None) -> Tensor:
        """n images (n, C, H, W) uint8, H*W*C sequential steps, the whole batch at once."""
        return self._sample(n, generator)[0]

    @torch.no_grad()
    def _sample(self, n: int, generator: torch.Generator | None, keep_logits: bool = False):
        """Samples, and (if ``keep_logits``) the (n, levels, C, H, W) logits each value was drawn from.

        The caching of Ramachandran et al. (2017, "Fast Generation for Convolutional Autoregressive
        Models"): every layer keeps the outputs it computed so far (with the zero rows above and
        columns to the left that the full pass pads with) and computes each new output once, from
        the cached inputs that determine it: one row of each vertical stack when an image row is
        complete, one column of each horizontal stack per pixel. No output is computed twice, so a
        sample costs the FLOPs of one full forward pass (tests/test_compute.py), each value by the
        full pass's arithmetic on the same inputs. What stays sequential is theirs too: H*W*C
        evaluations of one pixel, each ~20 small operations, so at a CPU's batch the Python and
        dispatch per operation cost about as much as the arithmetic. With several image channels,
        a pixel's columns are recomputed for each channel k (channel k's maps read channels < k at
        the pixel, by the channel masks); PixelCNN++, their model, draws a pixel's channels at once.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        channels, height, width = self.image_shape
        levels, c = self.config.levels, self.config.hidden_channels
        dtype, device = self.head[-1].weight.dtype, self.device

        def zeros(maps: int, rows: int, columns: int) -> Tensor:
            return torch.zeros(n, maps, rows, columns, dtype=dtype, device=device)

        top = max(layer.half for layer in self.layers)  # zero rows above the image in each vertical cache
        left = max(layer.left_reach for layer in self.layers)  # zero columns left of each row cache
        x = torch.zeros(n, channels, height, width, dtype=torch.uint8, device=device)
        # verticals[l]: input of layer l's vertical stack, image row i at top + i, filled as rows complete;
        # verticals[0] is the scaled image. The last layer's vertical output feeds nothing.
        verticals = [zeros(channels, top + height, width)] + [
            zeros(c, top + height, width) for _ in self.layers[1:]
        ]
        pres = [zeros(2 * c, 1, width) for _ in self.layers]  # each layer's vertical pre-activation, last row
        kept = torch.zeros(n, levels, channels, height, width, device=device) if keep_logits else None
        for i in range(height):
            # Row i reads the vertical pre-activations of row i-1 (zeros for row 0, as shift_down pads).
            links = [layer.v_to_h(pre) for layer, pre in zip(self.layers, pres, strict=True)]  # (n, 2C, 1, W)
            # rows[l]: input of layer l's horizontal stack on row i, column j at left + j; rows[0]: the image.
            rows = [zeros(channels, 1, left + width)] + [zeros(c, 1, left + width) for _ in self.layers]
            for j, at in enumerate(range(left, left + width)):
                for k in range(channels):
                    for l, layer in enumerate(self.layers):
                        window = rows[l][..., at - layer.left_reach : at + 1]  # (n, C_in, 1, left_reach + 1)
                        column = layer.horizontal(window, links[l][..., j : j + 1], pad=False)  # (n, C, 1, 1)
                        rows[l + 1][..., at] = column[..., 0]
                    logits = self._logits_of(rows[-1][..., at : at + 1])[:, :, k, 0, 0].float()  # (n, levels)
                    if kept is not None:
                        kept[:, :, k, i, j] = logits
                    value = torch.multinomial(F.softmax(logits, dim=1), 1, generator=generator)[:, 0]  # (n,)
                    x[:, k, i, j] = value.to(torch.uint8)
                    rows[0][:, k, 0, at] = self.scale(value).to(dtype)
            verticals[0][:, :, top + i] = rows[0][:, :, 0, left:]
            for l, layer in enumerate(self.layers):
                window = verticals[l][:, :, top + i - layer.half : top + i + 1]  # (n, C_in, half + 1, W)
                v, pres[l] = layer.vertical(window, pad=False)  # (n, C, 1, W), (n, 2C, 1, W)
                if l + 1 < len(verticals):
                    verticals[l + 1][:, :, top + i] = v[:, :, 0]
        return x, kept
