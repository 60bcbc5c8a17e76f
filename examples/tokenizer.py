"""A reference convolutional autoencoder whose bottleneck is an ``ifsq_quant`` quantizer.

    images (b, c, s, s) --Encoder--> z (b, d, s/4, s/4) --quantizer--> codes (b, d, s/4, s/4)
                                                                 \\--> indices (b, s/4, s/4[, G])
    codes --Decoder--> reconstruction (b, c, s, s)

The quantizer is passed in by the caller, so switching FSQ <-> iFSQ is one line::

    tok = Tokenizer(iFSQ(levels=[17] * 4, index_groups=[2, 2]), in_channels=1)
    tok = Tokenizer(FSQ(levels=[17] * 4, index_groups=[2, 2]), in_channels=1)

Encoder and decoder are small ResNets (GroupNorm, SiLU, 3x3 convs) with two stride-2
downsamplings (x4) and two nearest-neighbour upsamplings. The training loss is
``l2_weight * MSE + l1_weight * L1``. While training, the level index of every latent
position is counted in ``self.usage`` (an ``ifsq_quant.CodeUsage``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ifsq_quant import CodeUsage


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """x (b, c_in, h, w) -> (b, c_out, h, w): two GroupNorm-SiLU-conv3x3 layers plus a skip."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """(b, c, h, w) -> (b, c, h/2, w/2) with a stride-2 3x3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """(b, c, h, w) -> (b, c, 2h, 2w): nearest-neighbour upsampling then a 3x3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """images (b, in_channels, s, s) -> pre-quantization latents (b, latent_dim, s/4, s/4)."""

    def __init__(self, in_channels: int, latent_dim: int, channels: tuple[int, int, int], blocks: int):
        super().__init__()
        c0, c1, c2 = channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c0, 3, padding=1)]
        layers += [ResBlock(c0, c0) for _ in range(blocks)] + [Downsample(c0)]
        layers += [ResBlock(c0, c1)] + [ResBlock(c1, c1) for _ in range(blocks - 1)] + [Downsample(c1)]
        layers += [ResBlock(c1, c2)] + [ResBlock(c2, c2) for _ in range(blocks - 1)]
        layers += [group_norm(c2), nn.SiLU(), nn.Conv2d(c2, latent_dim, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """codes (b, latent_dim, s/4, s/4) -> images (b, out_channels, s, s) (unbounded; clamp to view)."""

    def __init__(self, out_channels: int, latent_dim: int, channels: tuple[int, int, int], blocks: int):
        super().__init__()
        c0, c1, c2 = channels
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, c2, 3, padding=1)]
        layers += [ResBlock(c2, c2) for _ in range(blocks)] + [Upsample(c2)]
        layers += [ResBlock(c2, c1)] + [ResBlock(c1, c1) for _ in range(blocks - 1)] + [Upsample(c1)]
        layers += [ResBlock(c1, c0)] + [ResBlock(c0, c0) for _ in range(blocks - 1)]
        layers += [group_norm(c0), nn.SiLU(), nn.Conv2d(c0, out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.layers(codes)


class Tokenizer(nn.Module):
    """Autoencoder with a finite-scalar-quantization bottleneck.

    quantizer: an ``ifsq_quant.FSQ`` / ``iFSQ`` (or any module with the same interface)
    whose ``codebook_dim`` is the latent channel count; it is called on channel-first
    latents (b, d, h, w) and returns (codes (b, d, h, w), indices (b, h, w[, G])).
    """

    def __init__(
        self,
        quantizer: nn.Module,
        in_channels: int = 1,
        channels: tuple[int, int, int] = (32, 64, 64),
        blocks: int = 1,
        l1_weight: float = 0.0,
        l2_weight: float = 1.0,
    ):
        super().__init__()
        self.quantizer = quantizer
        self.latent_dim = int(quantizer.codebook_dim)
        self.levels = [int(v) for v in quantizer.levels]
        self.encoder = Encoder(in_channels, self.latent_dim, tuple(channels), blocks)
        self.decoder = Decoder(in_channels, self.latent_dim, tuple(channels), blocks)
        self.l1_weight, self.l2_weight = l1_weight, l2_weight
        self.usage = CodeUsage(levels=self.levels)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (b, c, s, s) -> (codes (b, d, s/4, s/4) in [-1, 1], indices (b, s/4, s/4[, G]))."""
        return self.quantizer(self.encoder(images))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (b, d, s/4, s/4) -> images (b, c, s, s)."""
        return self.decoder(codes)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (b, s/4, s/4[, G]) -> images (b, c, s, s)."""
        return self.decode(self.quantizer.indices_to_codes(indices))

    def level_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (b, h, w[, G]) -> per-dimension level indices (b, h, w, d) in [0, L)."""
        return self.quantizer.indices_to_level_indices(indices)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (b, c, s, s) -> (reconstruction (b, c, s, s), codes, indices)."""
        codes, indices = self.encode(images)
        if self.training:
            self.usage.update(self.level_indices(indices.detach()))
        return self.decode(codes), codes, indices

    def loss(self, images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Scalar ``l2_weight * MSE + l1_weight * L1``."""
        loss = self.l2_weight * F.mse_loss(reconstruction, images)
        if self.l1_weight:
            loss = loss + self.l1_weight * F.l1_loss(reconstruction, images)
        return loss
