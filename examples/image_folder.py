"""A folder of one's own images (PNG, JPEG, or anything else Pillow reads) as tensors, and patches cut from them.

- ``list_images``: the image files under a folder (recursively), sorted;
- ``load_images``: each image as RGB, its shorter side resized to ``size`` and the centre cropped to
  ``size x size`` -> (n, 3, size, size) float32 in [-1, 1];
- ``random_crops``: random ``patch x patch`` crops with random horizontal flips (training);
- ``grid_crops``: the non-overlapping ``patch x patch`` tiles of every image (validation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from examples.training import ExampleError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def list_images(folder: Path) -> list[Path]:
    """The files under ``folder`` with an image suffix (case-insensitive), sorted; ExampleError if there are none."""
    if not folder.is_dir():
        raise ExampleError(f"image folder {str(folder)!r} does not exist or is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not paths:
        raise ExampleError(f"no images ({', '.join(SUFFIXES)}) under {str(folder)!r}")
    return paths


def load_image(path: Path, size: int) -> torch.Tensor:
    """One image -> (3, size, size) float32 in [-1, 1]: RGB, shorter side resized to ``size`` (bicubic), centre crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            pixels = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32)
    except (OSError, UnidentifiedImageError) as e:
        raise ExampleError(f"cannot read image {str(path)!r}: {e}") from None
    return torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1.0


def load_images(paths: list[Path], size: int) -> torch.Tensor:
    """paths -> (n, 3, size, size) float32 in [-1, 1] (see ``load_image``)."""
    return torch.stack([load_image(p, size) for p in paths])


def random_crops(images: torch.Tensor, patch: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random crops of images (m, c, s, s) -> (n, c, patch, patch), each flipped left-right with probability 1/2."""
    s = images.shape[-1]
    which = torch.randint(0, len(images), (n,), generator=generator)
    top = torch.randint(0, s - patch + 1, (n,), generator=generator)
    left = torch.randint(0, s - patch + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    crops = torch.stack([images[i, :, t : t + patch, q : q + patch] for i, t, q in zip(which.tolist(), top.tolist(), left.tolist())])
    crops[flip] = crops[flip].flip(-1)
    return crops


def grid_crops(images: torch.Tensor, patch: int) -> torch.Tensor:
    """The non-overlapping tiles of images (m, c, s, s) -> (m * (s // patch)^2, c, patch, patch)."""
    c = images.shape[1]
    tiles = images.unfold(2, patch, patch).unfold(3, patch, patch)  # (m, c, s/p, s/p, p, p)
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, patch, patch).contiguous()
