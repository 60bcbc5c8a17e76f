"""A class-conditional DiT on the tokenizer's continuous codes, trained by flow matching.

Latents are the tokenizer's quantized codes ``(b, d, h, w)`` in [-1, 1], normalized per
channel to zero mean and unit variance (``LatentNormalizer``). The DiT (Peebles & Xie)
patchifies them into ``(h/p)*(w/p)`` tokens, adds fixed 2-D sine-cosine positions, and runs
blocks conditioned on ``c = timestep embedding + class embedding`` through adaLN-Zero
(LayerNorm without affine, then shift/scale/gate regressed from ``c``; the regressors are
zero-initialized so every block starts as the identity).

Rectified flow: ``x_t = (1 - t) * x_0 + t * noise`` for ``t in [0, 1]``; the model predicts
the velocity ``v = noise - x_0``. Sampling integrates ``dx/dt = v`` from ``t = 1`` (noise)
to ``t = 0`` with Euler or Heun steps and classifier-free guidance
``v = v_null + cfg_scale * (v_class - v_null)``. ``snap_to_grid`` maps samples to the
nearest code of the quantizer's grid, so they can be decoded as (and compared with) tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (b, t, dim), shift/scale (b, dim) -> x * (1 + scale) + shift."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TimestepEmbedder(nn.Module):
    """t (b,) float in [0, 1] -> (b, dim): sinusoidal features of 1000*t, then an MLP."""

    def __init__(self, dim: int, frequency_dim: int = 128):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class LabelEmbedder(nn.Module):
    """labels (b,) -> (b, dim); row ``num_classes`` is the null class used for guidance."""

    def __init__(self, num_classes: int, dim: int, class_dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.class_dropout = class_dropout
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.table(labels)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention: x (b, t, dim) -> (b, t, dim)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, dim = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, dim))


class DiTBlock(nn.Module):
    """adaLN-Zero block: x (b, t, dim), c (b, dim) -> (b, t, dim)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """x (b, t, dim), c (b, dim) -> (b, t, patch*patch*out_channels), adaLN-modulated."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings: (1, grid*grid, dim)."""
    if dim % 4:
        raise ValueError(f"dim={dim} must be divisible by 4 for 2-D sine-cosine positions")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    out = [f(pos.reshape(-1)[:, None] * omega[None]) for pos in (ys, xs) for f in (np.sin, np.cos)]
    return torch.from_numpy(np.concatenate(out, axis=1)).float()[None]


class DiT(nn.Module):
    """Velocity model: x_t (b, c, s, s), t (b,) in [0, 1], labels (b,) -> v (b, c, s, s)."""

    def __init__(
        self,
        in_channels: int = 4,
        input_size: int = 4,
        patch_size: int = 1,
        num_classes: int = 10,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        class_dropout: float = 0.1,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size={input_size} must be divisible by patch_size={patch_size}")
        self.config = dict(
            in_channels=in_channels, input_size=input_size, patch_size=patch_size, num_classes=num_classes,
            dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, class_dropout=class_dropout,
        )
        self.in_channels, self.input_size, self.patch_size, self.num_classes = in_channels, input_size, patch_size, num_classes
        self.grid = input_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.register_buffer("position_embedding", sincos_2d(dim, self.grid), persistent=False)
        self.t_embedder = TimestepEmbedder(dim)
        self.y_embedder = LabelEmbedder(num_classes, dim, class_dropout)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(dim, patch_size, in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(basic)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(b, grid*grid, p*p*c) -> (b, c, grid*p, grid*p)."""
        b, p, c, g = x.shape[0], self.patch_size, self.in_channels, self.grid
        x = x.view(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.position_embedding  # (b, tokens, dim)
        c = self.t_embedder(t) + self.y_embedder(labels)  # (b, dim)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))

    def loss(self, x0: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rectified-flow loss: mean ``|v_theta(x_t, t) - (noise - x0)|^2``; x0 (b, c, s, s) normalized latents.

        ``t`` is drawn from a logit-normal distribution (``sigmoid(N(0, 1))``), which spends
        more of the training on the middle of the path, as in Stable Diffusion 3.
        """
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        t = torch.sigmoid(torch.randn(b, generator=generator, device=x0.device))
        xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        return (self(xt, t, labels) - (noise - x0)).pow(2).mean()

    def guided_velocity(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """v (b, c, s, s) with classifier-free guidance (one batched call for both branches)."""
        if cfg_scale == 1.0:
            return self(x, t, labels)
        null = torch.full_like(labels, self.num_classes)
        v = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        v_class, v_null = v.chunk(2)
        return v_null + cfg_scale * (v_class - v_null)

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        steps: int = 32,
        cfg_scale: float = 1.0,
        method: str = "heun",
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Integrates from noise at t=1 to t=0: labels (b,) -> normalized latents (b, c, s, s).

        ``method``: ``"euler"`` (``steps`` model calls) or ``"heun"`` (2 calls a step, the
        last step Euler).
        """
        if method not in ("euler", "heun"):
            raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
        was_training = self.training
        self.eval()
        b, device = labels.shape[0], labels.device
        x = torch.randn(b, self.in_channels, self.input_size, self.input_size, generator=generator, device=device)
        ts = torch.linspace(1.0, 0.0, steps + 1, device=device)
        for i in tqdm(range(steps), desc=f"diffusion sampling ({method})", leave=False, disable=not progress):
            t, t_next = ts[i], ts[i + 1]
            v = self.guided_velocity(x, t.expand(b), labels, cfg_scale)
            x_euler = x + (t_next - t) * v
            if method == "heun" and i < steps - 1:
                v_next = self.guided_velocity(x_euler, t_next.expand(b), labels, cfg_scale)
                x = x + (t_next - t) * 0.5 * (v + v_next)
            else:
                x = x_euler
        self.train(was_training)
        return x


class LatentNormalizer(nn.Module):
    """Per-channel standardization of latents (b, c, h, w), fitted on the training codes."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    @torch.no_grad()
    def fit(self, latents: torch.Tensor) -> LatentNormalizer:
        self.mean.copy_(latents.mean(dim=(0, 2, 3), keepdim=True))
        self.std.copy_(latents.std(dim=(0, 2, 3), keepdim=True).clamp(min=1e-6))
        return self

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


@torch.no_grad()
def snap_to_grid(codes: torch.Tensor, quantizer: nn.Module) -> torch.Tensor:
    """codes (b, d, h, w) -> the nearest code of ``quantizer``'s grid, same shape.

    Uses the quantizer's own ``codes_to_indices`` (nearest level per dimension) and
    ``indices_to_codes``, so it holds for any activation and bin layout.
    """
    indices = quantizer.codes_to_indices(codes.permute(0, 2, 3, 1).float())
    return quantizer.indices_to_codes(indices).to(codes.dtype)
