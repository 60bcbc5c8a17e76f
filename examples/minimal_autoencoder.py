"""iFSQ in a small convolutional autoencoder: train on scikit-learn's 8x8 digits, then image -> indices -> image.

    python -m examples.minimal_autoencoder              # about a minute on one CPU thread
    python -m examples.minimal_autoencoder --steps 100  # a few seconds
    python examples/minimal_autoencoder.py --out recon.png

The bottleneck is one line: ``iFSQ(LEVELS)``; ``FSQ(LEVELS)`` is the tanh original, nothing else changes.
The held-out digits and their decoded indices are saved side by side as a PNG (``--out``).
"""

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

from ifsq_quant import CodeUsage, iFSQ

LEVELS = [8, 5, 5, 5]  # 1,000 codes per latent position; d = 4 latent channels


class Autoencoder(nn.Module):
    """images (b, 1, 8, 8) -> latents (b, 4, 2, 2) -> codes and indices (b, 2, 2) -> images (b, 1, 8, 8)."""

    def __init__(self, levels: list[int], width: int = 32):
        super().__init__()
        d = len(levels)
        self.encoder = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, width, 4, 2, 1), nn.SiLU(),
                                     nn.Conv2d(width, width, 4, 2, 1), nn.SiLU(), nn.Conv2d(width, d, 1))
        self.quantizer = iFSQ(levels)  # channel-first latents (b, d, h, w) in, codes (b, d, h, w) and indices (b, h, w) out
        self.decoder = nn.Sequential(nn.Conv2d(d, width, 1), nn.SiLU(), nn.ConvTranspose2d(width, width, 4, 2, 1), nn.SiLU(),
                                     nn.ConvTranspose2d(width, width, 4, 2, 1), nn.SiLU(), nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes, indices = self.quantizer(self.encoder(images))  # straight-through: gradients reach the encoder
        return self.decoder(codes), indices

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (b, h, w) -> images (b, 1, 8, 8): what a generator that samples tokens would decode."""
        return self.decoder(self.quantizer.indices_to_codes(indices))


def save_reconstructions(path: Path, real: torch.Tensor, decoded: torch.Tensor, n: int = 16, zoom: int = 4) -> None:
    """The first ``n`` images (b, 1, 8, 8) in [-1, 1] of ``real`` (top row) and ``decoded`` (bottom row) -> a PNG, each pixel zoom x zoom."""
    from PIL import Image

    rows = [torch.cat(list(x[:n, 0]), dim=1) for x in (real, decoded)]  # (8, 8n) each
    grid = ((torch.cat(rows, dim=0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    grid = grid.repeat_interleave(zoom, 0).repeat_interleave(zoom, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.numpy()).save(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps (batch 128)")
    parser.add_argument("--out", type=Path, default=Path("runs/minimal_autoencoder.png"),
                        help="PNG of held-out digits (top) and their decoded indices (bottom) (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out must name a .png file, got {str(args.out)!r}")
    torch.set_num_threads(1)  # a model this small runs best on one thread (two can spin-wait on a busy 2-core machine)
    torch.manual_seed(0)
    digits = load_digits()  # 1,797 images, 8x8, grey levels 0..16 -> [-1, 1]
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8 - 1
    train, test = images[:1500], images[1500:]

    model = Autoencoder(LEVELS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    for step in range(args.steps):
        batch = train[torch.randint(0, len(train), (128,))]
        loss = F.mse_loss(model(batch)[0], batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 500 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}")

    model.eval()
    with torch.no_grad():
        _, indices = model(test)  # (n, 2, 2) int64 in [0, 1000): 4 tokens per image
        decoded = model.decode_indices(indices).clamp(-1, 1)
    mse = (decoded - test).pow(2).flatten(1).mean(1)
    psnr = float((10 * torch.log10(4 / mse)).mean())  # pixel range 2
    usage = CodeUsage(LEVELS)
    usage.update(model.quantizer.indices_to_level_indices(indices))  # (n, 2, 2, 4) level of every dimension
    utilization = float(usage.utilization().mean())  # entropy / log2(L) per dimension: 1 = every level used equally
    print(f"held-out digits: {tuple(indices.shape)} indices -> decoded PSNR {psnr:.2f} dB, bin utilization {utilization:.3f}")
    try:
        save_reconstructions(args.out, test, decoded)
    except OSError as e:
        parser.exit(2, f"{parser.prog}: error: --out {str(args.out)!r}: cannot write the PNG: {e.strerror or e}\n")
    print(f"held-out digits (top) and their decoded indices (bottom) -> {args.out}")
    return dict(psnr=psnr, utilization=utilization, indices=indices, png=args.out)


if __name__ == "__main__":
    main()
