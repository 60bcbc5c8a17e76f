"""A folder of one's own images (PNG, JPEG, or anything else Pillow reads) as tensors, and tensors back to PNG files.

- ``list_images``: the image files under a folder (recursively), sorted;
- ``load_image`` / ``load_images``: each image as RGB, its shorter side resized to ``size`` and the
  centre cropped to ``size x size`` -> (3, size, size) float32 in [-1, 1];
- ``FolderImages``: the same as a ``torch.utils.data.Dataset``: an image is decoded when it is asked for
  (in a DataLoader worker), never all of them up front;
- ``RandomCrops``: a Dataset of random ``patch x patch`` crops (random horizontal flips) of the images,
  each crop a function of (seed, epoch, crop number), so any number of processes and workers cut the
  same crops;
- ``to_uint8``, ``save_png``, ``save_grid``: images in [-1, 1] -> 8-bit PNG files.

Pixel modes (what ``load_image`` does with each):

- 8-bit RGB, greyscale (L), 1-bit, CMYK, YCbCr, LAB, HSV: converted to RGB (greyscale: the same value in
  the three channels);
- with transparency (RGBA, LA, PA, palette images with a transparent colour): composited onto white;
- palette (P): its colours;
- 16-bit greyscale (PNG and TIFF, Pillow modes I;16, I;16B, I;16L; mode I is read the same way):
  0..65535 scaled to [-1, 1] at full precision (resized in floating point, not through 8 bits). Pillow
  reads 16-bit RGB(A) PNGs as 8-bit RGB(A), correctly scaled;
- 32-bit floating point (F): refused (its range is not defined); convert such files to 8 or 16 bits.

JPEGs are decoded at a reduced scale when they are at least twice ``size`` (Pillow's ``draft``: much
faster for camera photos), and the EXIF orientation is applied.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from examples.training import ExampleError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # integer greyscale, read as 0..65535
WHITE = (255, 255, 255)


class ImageError(ExampleError):
    """An image file that cannot be read (raised in the process, or DataLoader worker, that reads it)."""


def list_images(folder: Path) -> list[Path]:
    """The files under ``folder`` with an image suffix (case-insensitive), sorted; ExampleError if there are none."""
    if not folder.is_dir():
        raise ExampleError(f"image folder {str(folder)!r} does not exist or is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not paths:
        raise ExampleError(f"no images ({', '.join(SUFFIXES)}) under {str(folder)!r}")
    return paths


def _resize_and_crop(img, size: int):
    """A Pillow image -> its shorter side resized to ``size`` (bicubic), then the centre ``size x size``."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(path: Path, size: int) -> torch.Tensor:
    """One image -> (3, size, size) float32 in [-1, 1] (see the module docstring for the pixel modes)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (size, size))  # decode at 1/2, 1/4 or 1/8 scale while both sides stay >= size
            img = ImageOps.exif_transpose(img)
            if img.mode == "F":
                raise ImageError(f"image {str(path)!r} holds 32-bit floating-point pixels (mode F), whose range is not defined; "
                                   "convert it to 8 or 16 bits per channel")
            if img.mode in SIXTEEN_BIT_GREY:
                grey = np.asarray(_resize_and_crop(img.convert("F"), size), dtype=np.float32)  # convert("RGB") would clip at 255
                pixels = np.repeat(np.clip(grey, 0.0, 65535.0)[..., None] / 65535.0, 3, axis=-1)
            else:
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    rgba = img.convert("RGBA")
                    img = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE + (255,)), rgba)
                pixels = np.asarray(_resize_and_crop(img.convert("RGB"), size), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as e:  # ValueError: Pillow's for some damaged files
        raise ImageError(f"cannot read image {str(path)!r}: {e}") from None
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1) * 2.0 - 1.0


def load_images(paths: list[Path], size: int) -> torch.Tensor:
    """paths -> (n, 3, size, size) float32 in [-1, 1] (see ``load_image``)."""
    return torch.stack([load_image(p, size) for p in paths])


class FolderImages(Dataset):
    """Item ``i``: image ``paths[i]`` -> (3, size, size) float32 in [-1, 1], decoded when asked for."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image(self.paths[i], self.size)


class RandomCrops(Dataset):
    """``crops_per_image`` random crops of every image: item ``(epoch, j)`` -> crop (3, patch, patch) in [-1, 1].

    Crop ``j`` (``0 <= j < len(self)``) comes from image ``j // crops_per_image``; its position and
    left-right flip are drawn from a generator seeded with ``(seed, epoch, j)``, so the crop is the
    same whichever process or worker cuts it, and different in every epoch.
    """

    def __init__(self, paths: list[Path], size: int, patch: int, crops_per_image: int, seed: int):
        self.images = FolderImages(paths, size)
        self.size, self.patch, self.crops_per_image, self.seed = size, patch, crops_per_image, seed

    def __len__(self) -> int:
        return len(self.images) * self.crops_per_image

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        epoch, j = item
        rng = np.random.default_rng([self.seed, epoch, j])
        top, left = rng.integers(0, self.size - self.patch + 1, size=2)
        crop = self.images[j // self.crops_per_image][:, top : top + self.patch, left : left + self.patch]
        return crop.flip(-1) if rng.random() < 0.5 else crop.contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """images (n, c, h, w) in [-1, 1] (clamped) -> (n, h, w, c) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def save_png(path: Path, image: np.ndarray) -> None:
    """(h, w, 3) or (h, w, 1) uint8 -> a PNG file, written under a temporary name and renamed."""
    from PIL import Image

    partial = path.with_name(path.name + ".partial")
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(partial, format="PNG")
    os.replace(partial, path)


def save_grid(path: Path, rows: list[torch.Tensor], pad: int = 2) -> None:
    """Rows of images, each (n, c, h, w) in [-1, 1] with one n, c, h, w -> one PNG (white gaps of ``pad`` pixels)."""
    n, c, h, w = rows[0].shape
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for i, img in enumerate(to_uint8(row)):
            grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + i * (w + pad) : pad + i * (w + pad) + w] = img
    save_png(path, grid)
