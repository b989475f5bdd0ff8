"""An autoregressive Transformer over pixels (Image Transformer, Parmar et al. 2018; Sparse
Transformer, Child et al. 2019; ImageGPT, Chen et al. 2020), decoder-only with full causal attention.

The image is one sequence of D = H * W * C tokens in raster order, channels innermost (the order of
PixelCNN): p(x) = prod_t p(x_t | x_<t), each factor a ``levels``-way softmax, so log p(x) is exact
and at 256 levels it is the 8-bit protocol's likelihood. Token t's input is the embedding of the
previous value x_{t-1} (a start token for t = 0) plus learned embeddings of token t's row, column
and channel; causal self-attention (``F.scaled_dot_product_attention`` with ``is_causal``) lets it
read inputs 0..t only, so its output predicts x_t from x_<t.

Sampling draws one token per step with a key/value cache: each step runs the network on the one
new token and attends to the cached keys and values of the earlier ones, instead of running the
whole prefix again (``sample(..., cache=False)`` is that slow reference; tests compare the two).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.models.base import GenerativeModel, TrainConfig, bits_per_dim, register_model


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    levels: int = 256  # intensities per pixel: a levels-way softmax per token
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    mlp_ratio: int = 4  # hidden width of each MLP, in multiples of d_model

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "n_layers", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")


class Block(nn.Module):
    """Pre-norm block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads = config.n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.mlp_ratio * d), nn.GELU(), nn.Linear(config.mlp_ratio * d, d)
        )

    def _heads(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, d) -> q, k, v each (B, nh, T, hs)."""
        b, t, d = h.shape
        qkv = self.qkv(self.ln1(h)).view(b, t, 3, self.n_heads, d // self.n_heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def _finish(self, h: Tensor, attended: Tensor) -> Tensor:
        b, _, t, _ = attended.shape
        h = h + self.proj(attended.transpose(1, 2).reshape(b, t, -1))  # (B, T, d)
        return h + self.mlp(self.ln2(h))

    def forward(self, h: Tensor) -> Tensor:
        q, k, v = self._heads(h)
        return self._finish(h, F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def step(self, h: Tensor, cache: tuple[Tensor, Tensor], t: int) -> Tensor:
        """One new token h (B, 1, d) at position t: its key and value go into the cache (B, nh, D, hs)
        at t, and its query attends to positions 0..t of the cache."""
        q, k, v = self._heads(h)  # (B, nh, 1, hs)
        keys, values = cache
        keys[:, :, t : t + 1], values[:, :, t : t + 1] = k, v
        return self._finish(h, F.scaled_dot_product_attention(q, keys[:, :, : t + 1], values[:, :, : t + 1]))


@register_model("transformer", aliases=("image-transformer",))
class Transformer(GenerativeModel):
    likelihood = "exact"
    Config = TransformerConfig
    profiles = {
        "smoke": lambda: (
            TransformerConfig(d_model=16, n_heads=2, n_layers=1),
            TrainConfig(max_steps=30, batch_size=32, val_images=256, checkpoint_every=10, log_every=5),
        ),
        # Sized for 2 CPU cores like PixelCNN's quick profile: attention over 784 tokens is the cost,
        # so the net is narrow and shallow and the batch small.
        "quick": lambda: (
            TransformerConfig(d_model=64, n_heads=4, n_layers=3),
            TrainConfig(
                epochs=1,
                batch_size=16,
                lr=2e-3,
                max_steps=600,
                val_images=1000,
                checkpoint_every=200,
                warmup_steps=50,
            ),
        ),  # fmt: skip
        # For a GPU: the size of Katharopoulos et al.'s (2020) MNIST transformer (8 layers, 8 heads, 256).
        "full": lambda: (
            TransformerConfig(d_model=256, n_heads=8, n_layers=8),
            TrainConfig(
                epochs=30,
                batch_size=64,
                lr=5e-4,
                val_images=5000,
                checkpoint_every=2000,
                warmup_steps=1000,
                grad_clip=1.0,  # constant after warm-up, like every family: a time budget can end it
            ),
        ),  # fmt: skip
    }

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        c, h, w = config.image_shape
        d = config.d_model
        self.value = nn.Embedding(config.levels + 1, d)  # index `levels` is the start token
        self.row, self.col, self.channel = nn.Embedding(h, d), nn.Embedding(w, d), nn.Embedding(c, d)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.levels)
        t = torch.arange(self.dims)
        # Raster order, channels innermost: token t is channel t % C of pixel t // C.
        self.register_buffer("rows", t // (c * w), persistent=False)
        self.register_buffer("cols", t // c % w, persistent=False)
        self.register_buffer("channels", t % c, persistent=False)

    def _check(self, x: Tensor) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"transformer expects uint8 (B, {self.image_shape}), got {x.dtype} {tuple(x.shape)}"
            )
        if self.levels < 256 and int(x.max()) >= self.levels:
            raise ValueError(f"inputs must be below levels={self.levels}; quantize them first")

    def tokens(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D) long in raster order, channels innermost."""
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1).long()

    def embed(self, values: Tensor, positions: slice) -> Tensor:
        """Inputs (B, T, d) of the tokens at ``positions``: ``values`` (B, T, d), the value embeddings of
        the tokens before them (the start token's at position 0), plus row, column and channel."""
        where = self.row.weight[self.rows[positions]] + self.col.weight[self.cols[positions]]
        return values + where + self.channel.weight[self.channels[positions]]

    def logits(self, x: Tensor) -> Tensor:
        """(B, C, H, W) uint8 -> (B, D, levels) float32 logits of each token given those before it."""
        self._check(x)
        values = self.value(self.tokens(x))  # (B, D, d): token t's value embedding at t
        start = self.value.weight[self.levels].expand(x.shape[0], 1, -1)  # (B, 1, d)
        h = self.embed(torch.cat([start, values[:, :-1]], dim=1), slice(None))  # (B, D, d), shifted by one
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h)).float()  # (B, D, levels)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log P(x) in nats: the sum of log softmax at the true value over all D tokens. (B,)"""
        logp = F.log_softmax(self.logits(x), dim=-1)  # (B, D, levels)
        return logp.gather(2, self.tokens(x).unsqueeze(2)).squeeze(2).sum(1)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        nats = -self.log_prob(x).mean()
        return {"loss": nats, "bpd": bits_per_dim(nats.detach(), self.dims)}

    # ------------------------------------------------------------------------------- sampling

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, mode: str | None = None) -> Tensor:
        """n images (n, C, H, W) uint8, one token per step through the key/value cache."""
        return self.draw(n, generator, keep_logits=False)[0]

    @torch.no_grad()
    def draw(
        self, n: int, generator: torch.Generator | None = None, cache: bool = True, keep_logits: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Samples and the (n, D, levels) logits each token was drawn from (None unless ``keep_logits``).
        ``cache=False`` runs the network on the whole prefix at every step (the reference the cache
        must reproduce)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        dims, device = self.dims, self.device
        dtype = self.head.weight.dtype
        tokens = torch.full((n, dims + 1), self.levels, dtype=torch.long, device=device)  # start token first
        kept = torch.zeros(n, dims, self.levels, device=device) if keep_logits else None  # 200 MB at n=256
        shape = (n, self.config.n_heads, dims, self.config.d_model // self.config.n_heads)
        caches = [_pair(shape, dtype, device) for _ in self.blocks] if cache else []
        for t in range(dims):
            if cache:
                h = self.embed(self.value(tokens[:, t : t + 1]), slice(t, t + 1))  # (n, 1, d)
                for block, kv in zip(self.blocks, caches, strict=True):
                    h = block.step(h, kv, t)
            else:
                h = self.embed(self.value(tokens[:, : t + 1]), slice(0, t + 1))  # (n, t + 1, d)
                for block in self.blocks:
                    h = block(h)
            logits = self.head(self.ln(h[:, -1])).float()  # (n, levels)
            if kept is not None:
                kept[:, t] = logits
            tokens[:, t + 1] = torch.multinomial(F.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
        c, height, width = self.image_shape
        images = tokens[:, 1:].reshape(n, height, width, c).permute(0, 3, 1, 2).to(torch.uint8)
        return images.contiguous(), kept


def _pair(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    return torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
