"""Embedded, offline image data for the examples: nothing is downloaded.

Two datasets, both returned as float32 tensors in [-1, 1], channel-first:

- ``load_digits_split``: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels),
  bilinearly upsampled to 16x16, with labels 0..9 and a fixed, stratified
  train/validation split (``n_val_per_class`` images of every class go to validation).
- ``load_patches_split``: 32x32 RGB patches cut on a regular grid from the photographs
  shipped inside scikit-image (``skimage.data``) and scikit-learn
  (``load_sample_images``). Whole photographs are held out for validation, so no
  validation patch overlaps a training photograph. The label of a patch is the index of
  its photograph in ``PHOTOS``.

Both are deterministic: the same arguments give the same tensors. (The studies' larger digits set,
rendered from fonts, is ``studies/font_digits.py``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class ImageSet:
    """A labelled set of images.

    images: (n, c, h, w) float32 in [-1, 1]; labels: (n,) int64 in [0, num_classes).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


# ----------------------------------------------------------------------------- digits

DIGITS_SIZE = 16


def load_digits_split(n_val_per_class: int = 30, size: int = DIGITS_SIZE, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Digits upsampled to ``size`` x ``size``; returns (train, val).

    train: 1797 - 10 * n_val_per_class images, val: 10 * n_val_per_class images,
    each (n, 1, size, size) in [-1, 1]. The split is stratified and fixed by ``seed``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32)) / 16.0 * 2.0 - 1.0  # (n, 8, 8)
    x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp(-1.0, 1.0).contiguous()
    y = torch.from_numpy(digits.target.astype(np.int64))

    rng = np.random.RandomState(seed)
    val_idx = []
    for c in range(10):
        members = np.flatnonzero(digits.target == c)
        if n_val_per_class > len(members):
            raise ValueError(f"n_val_per_class={n_val_per_class} exceeds the {len(members)} digits of class {c}")
        val_idx.extend(rng.permutation(members)[:n_val_per_class].tolist())
    val_idx = np.sort(np.array(val_idx, dtype=np.int64))
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[val_idx] = False
    train_idx = np.flatnonzero(train_mask)
    train = ImageSet(x[train_idx], y[train_idx], 10, "digits")
    val = ImageSet(x[val_idx], y[val_idx], 10, "digits")
    return train, val


# ----------------------------------------------------------------------------- natural patches

# (source, name): skimage photographs load through skimage.data.<name>(); sklearn ones
# through load_sample_images(). Only files shipped inside the wheels (no pooch download).
PHOTOS: list[tuple[str, str]] = [
    ("skimage", "astronaut"),
    ("skimage", "camera"),
    ("skimage", "chelsea"),
    ("skimage", "rocket"),
    ("skimage", "hubble_deep_field"),
    ("skimage", "immunohistochemistry"),
    ("skimage", "retina"),
    ("skimage", "grass"),
    ("skimage", "gravel"),
    ("skimage", "brick"),
    ("skimage", "moon"),
    ("skimage", "coins"),
    ("sklearn", "china.jpg"),
    ("skimage", "coffee"),      # validation
    ("sklearn", "flower.jpg"),  # validation
]
VAL_PHOTOS: tuple[str, ...] = ("coffee", "flower.jpg")


def load_photo(source: str, name: str) -> np.ndarray:
    """One shipped photograph as (h, w, 3) float32 in [0, 1] (grey images are repeated to RGB)."""
    if source == "skimage":
        import skimage.data

        img = getattr(skimage.data, name)()
    elif source == "sklearn":
        from sklearn.datasets import load_sample_image

        img = load_sample_image(name)
    else:
        raise ValueError(f"unknown photo source {source!r}; expected 'skimage' or 'sklearn'")
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.float32)
    else:
        img = img.astype(np.float32) / 255.0
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return img[:, :, :3]


def cut_patches(img: np.ndarray, patch: int, stride: int, scale: float) -> torch.Tensor:
    """Grid patches of one photograph: img (h, w, 3) in [0, 1] -> (n, 3, patch, patch) in [-1, 1].

    The photograph is first resized by ``scale`` (area interpolation) so that a patch holds
    more than a few pixels of texture.
    """
    t = torch.from_numpy(img).permute(2, 0, 1)[None]  # (1, 3, h, w)
    if scale != 1.0:
        h, w = t.shape[-2:]
        t = F.interpolate(t, size=(max(patch, round(h * scale)), max(patch, round(w * scale))), mode="area")
    t = t * 2.0 - 1.0
    p = t.unfold(2, patch, stride).unfold(3, patch, stride)  # (1, 3, nh, nw, patch, patch)
    p = p.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, patch, patch)
    return p.clamp(-1.0, 1.0).contiguous()


def load_patches_split(
    patch: int = 32, stride: int | None = None, scale: float = 0.5, max_per_photo: int | None = 400, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """Natural-image patches; returns (train, val) with whole photographs held out.

    Each set: images (n, 3, patch, patch) in [-1, 1], labels (n,) = index into ``PHOTOS``.
    The default stride is half a patch. ``max_per_photo`` caps the patches per photograph (a fixed random subset, by ``seed``)
    so that the big photographs do not dominate.
    """
    stride = patch // 2 if stride is None else stride
    rng = np.random.RandomState(seed)
    train_x, train_y, val_x, val_y = [], [], [], []
    for label, (source, name) in enumerate(PHOTOS):
        p = cut_patches(load_photo(source, name), patch, stride, scale)
        if max_per_photo is not None and p.shape[0] > max_per_photo:
            keep = np.sort(rng.permutation(p.shape[0])[:max_per_photo])
            p = p[torch.from_numpy(keep)]
        y = torch.full((p.shape[0],), label, dtype=torch.int64)
        if name in VAL_PHOTOS:
            val_x.append(p), val_y.append(y)
        else:
            train_x.append(p), train_y.append(y)
    n = len(PHOTOS)
    train = ImageSet(torch.cat(train_x), torch.cat(train_y), n, "patches")
    val = ImageSet(torch.cat(val_x), torch.cat(val_y), n, "patches")
    return train, val


def load_dataset(name: str, **kwargs) -> tuple[ImageSet, ImageSet]:
    """``"digits"`` or ``"patches"`` -> (train, val)."""
    if name == "digits":
        return load_digits_split(**kwargs)
    if name == "patches":
        return load_patches_split(**kwargs)
    raise ValueError(f"unknown dataset {name!r}; expected 'digits' or 'patches'")
