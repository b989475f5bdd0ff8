"""The denoising network of the diffusion family: Ho et al.'s (2020) U-Net, small and configurable.

Sinusoidal time embedding, residual blocks with GroupNorm, self-attention at the configured
resolutions, optionally on p x p pixel patches folded into channels. Every size comes from the
config; the diffusion model (models/diffusion.py) owns the process and the likelihood.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class UNetConfig(Protocol):
    """The fields of a model config the U-Net reads (DiffusionConfig has them)."""

    patch: int
    channels: int
    channel_mults: tuple[int, ...]
    res_blocks: int
    attention_levels: tuple[int, ...]
    groups: int
    dropout: float


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding (Vaswani et al.) of float timesteps (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, a 1x1 skip when widths differ."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # every block starts as its skip path
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))  # (B, cout, H, W)
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the H*W positions, residual, output projection zero-initialized."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2)  # (B, 3, HW, C)
        out = F.scaled_dot_product_attention(qkv[:, 0:1], qkv[:, 1:2], qkv[:, 2:3])  # (B, 1, HW, C)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Ho et al.'s U-Net: per resolution ``res_blocks`` residual blocks (attention where configured),
    a strided-conv downsample between resolutions, a middle of res-attention-res, and a mirrored
    decoder that concatenates the encoder's activations. (B, C, H, W), (B,) -> (B, out, H, W)."""

    def __init__(self, config: UNetConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.patch = config.patch
        c_img = in_channels * config.patch**2
        ch, groups, drop = config.channels, config.groups, config.dropout
        temb = 4 * ch
        self.time_embed_dim = ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.inp = nn.Conv2d(c_img, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips, width = [ch], ch
        last = len(config.channel_mults) - 1
        for level, mult in enumerate(config.channel_mults):
            for _ in range(config.res_blocks):
                layers = [ResBlock(width, ch * mult, temb, groups, drop)]
                width = ch * mult
                if level in config.attention_levels:
                    layers.append(Attention(width, groups))
                self.down.append(nn.ModuleList(layers))
                skips.append(width)
            if level != last:
                self.down.append(nn.ModuleList([nn.Conv2d(width, width, 3, stride=2, padding=1)]))
                skips.append(width)

        self.mid = nn.ModuleList(
            [
                ResBlock(width, width, temb, groups, drop),
                Attention(width, groups),
                ResBlock(width, width, temb, groups, drop),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mults))):
            for _ in range(config.res_blocks + 1):
                layers = [ResBlock(width + skips.pop(), ch * mult, temb, groups, drop)]
                width = ch * mult
                if level in config.attention_levels:
                    layers.append(Attention(width, groups))
                self.up.append(nn.ModuleList(layers))
            if level != 0:
                self.up.append(
                    nn.ModuleList(
                        [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)]
                    )
                )

        self.out = nn.Sequential(
            nn.GroupNorm(groups, width),
            nn.SiLU(),
            nn.Conv2d(width, out_channels * config.patch**2, 3, padding=1),
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(layers: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for layer in layers:
            h = layer(h, emb) if isinstance(layer, (ResBlock, Attention)) else layer(h)
        return h

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.time_embed_dim))  # (B, 4ch)
        h = self.inp(F.pixel_unshuffle(x, self.patch))  # (B, ch, H/p, W/p)
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb)  # (B, ch*mult, H/(p 2^level), W/(p 2^level))
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)  # (B, width + skip width, ., .)
            h = self._run(layers, h, emb)
        return F.pixel_shuffle(self.out(h), self.patch)  # (B, out, H, W)
