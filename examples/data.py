"""Embedded, offline image data for the examples: nothing is downloaded.

Three datasets, all returned as float32 tensors in [-1, 1], channel-first:

- ``load_digits_split``: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels),
  bilinearly upsampled to 16x16, with labels 0..9 and a fixed, stratified
  train/validation split (``n_val_per_class`` images of every class go to validation).
- ``load_font_digits``: a larger digits set (any size; the protocol uses 20,000 training and
  5,000 test images), rendered from the TrueType fonts that ship inside matplotlib and
  randomly deformed (stroke width, affine, elastic); see ``load_font_digits`` for how.
- ``load_patches_split``: 32x32 RGB patches cut on a regular grid from the photographs
  shipped inside scikit-image (``skimage.data``) and scikit-learn
  (``load_sample_images``). Whole photographs are held out for validation, so no
  validation patch overlaps a training photograph. The label of a patch is the index of
  its photograph in ``PHOTOS``.

Both functions are deterministic: the same arguments give the same tensors.
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


# ----------------------------------------------------------------------------- digits rendered from fonts

# The fonts with digits among those matplotlib ships (mpl-data/fonts/ttf): DejaVu Sans, Sans Mono and Serif,
# STIX General (four styles each) and five Computer Modern faces. 21 fonts.
FONT_FILES: tuple[str, ...] = tuple(
    [f"DejaVu{family}{style}.ttf" for family in ("Sans", "SansMono", "Serif")
     for style in ("", "-Bold", "-Oblique" if family != "Serif" else "-Italic",
                   "-BoldOblique" if family != "Serif" else "-BoldItalic")]
    + [f"STIXGeneral{style}.ttf" for style in ("", "Bol", "Italic", "BolIta")]
    + [f"cm{face}10.ttf" for face in ("r", "b", "ss", "ti", "tt")]
)
# Independent random streams: a split's images depend only on (seed, split), never on the other splits' sizes.
FONT_DIGIT_SPLITS: dict[str, int] = dict(train=20_000, val=2_000, test=5_000, features=10_000, reference=5_000)
_SPLIT_IDS = {name: i for i, name in enumerate(FONT_DIGIT_SPLITS)}
_GLYPH = 64  # rendering resolution (pixels); images are area-downsampled from it


def _font_dir():
    import os

    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


_GLYPH_CACHE: dict[int, np.ndarray] = {}


def font_glyphs(glyph: int = _GLYPH) -> np.ndarray:
    """The 10 digits of every font in ``FONT_FILES``: (fonts, 10, glyph, glyph) float32 ink in [0, 1].

    Each digit is rendered large (PIL, antialiased), cropped to its ink, scaled so that its height
    is 5/8 of the canvas (its width at most 5/8 too, aspect kept) and centred. Cached per process.
    """
    if glyph in _GLYPH_CACHE:
        return _GLYPH_CACHE[glyph]
    import os

    from PIL import Image, ImageDraw, ImageFont

    folder = _font_dir()
    target = round(glyph * 5 / 8)
    out = np.zeros((len(FONT_FILES), 10, glyph, glyph), dtype=np.float32)
    for f, name in enumerate(FONT_FILES):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"font {name} not found in {folder}: the font digits need matplotlib's shipped fonts")
        font = ImageFont.truetype(path, 4 * glyph)
        for digit in range(10):
            canvas = Image.new("L", (8 * glyph, 8 * glyph), 0)
            ImageDraw.Draw(canvas).text((2 * glyph, 2 * glyph), str(digit), fill=255, font=font)
            ink = canvas.crop(canvas.getbbox())
            w, h = ink.size
            k = min(target / h, target / w) if w > h else target / h
            ink = ink.resize((max(1, round(w * k)), max(1, round(h * k))), Image.LANCZOS)
            w, h = ink.size
            out[f, digit, (glyph - h) // 2 : (glyph - h) // 2 + h, (glyph - w) // 2 : (glyph - w) // 2 + w] = np.asarray(ink, np.float32) / 255
    _GLYPH_CACHE[glyph] = out
    return out


def load_font_digits(split: str = "train", n: int | None = None, seed: int = 0, size: int = DIGITS_SIZE,
                     chunk: int = 2000) -> ImageSet:
    """Digits rendered from fonts and randomly deformed: (n, 1, size, size) in [-1, 1], labels 0..9.

    How an image is made (all randomness from ``numpy.random.default_rng([seed, split id])``):

    1. label = a balanced class (exactly ``n // 10`` per class, plus the first ``n % 10``
       classes once more, in random order); font = one of the 21 ``FONT_FILES``, uniformly;
       its glyph rendered at 64x64 (``font_glyphs``; white ink on black).
    2. stroke width: a grey-level dilation (3x3 max filter, 1-3 times) with probability 0.4,
       an erosion (3x3 min filter, once) with probability 0.2, unchanged otherwise; erosion is
       skipped when it would remove more than 60 % of the ink (thin fonts).
    3. affine: rotation U(-12, 12) degrees, scale U(0.8, 1.15) with an aspect factor
       U(0.85, 1.15), shear U(-0.3, 0.3), translation U(-0.08, 0.08) of the half-width per axis.
    4. elastic: a displacement field of 4x4 uniform U(-1, 1) values per axis, bicubically
       upsampled to 64x64, times U(0, 0.06) (in units of the half-width), added to the affine grid;
       bilinear resampling.
    5. area-downsampling to ``size`` x ``size``, contrast stretched so that the brightest pixel
       is 1 (thin strokes would otherwise stay grey), and ``x * 2 - 1`` (background -1, ink 1).

    Splits (``FONT_DIGIT_SPLITS``: train 20,000, val 2,000, test 5,000, features 10,000,
    reference 5,000 by default) are independent draws of this process; the same
    (split, n, seed, size) always gives the same tensors. About 3.5 s per 10,000 images on one CPU thread.
    """
    if split not in FONT_DIGIT_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(FONT_DIGIT_SPLITS)}")
    n = FONT_DIGIT_SPLITS[split] if n is None else int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    glyphs = torch.from_numpy(font_glyphs())
    rng = np.random.default_rng([seed, _SPLIT_IDS[split]])
    labels = np.tile(np.arange(10), n // 10 + 1)[:n]
    labels = rng.permutation(labels)
    fonts = rng.integers(0, len(FONT_FILES), n)
    stroke = rng.choice([-1, 0, 1, 2, 3], size=n, p=[0.2, 0.4, 0.2, 0.1, 0.1])
    angle = np.deg2rad(rng.uniform(-12, 12, n))
    scale = rng.uniform(0.8, 1.15, n)
    aspect = rng.uniform(0.85, 1.15, n)
    shear = rng.uniform(-0.3, 0.3, n)
    shift = rng.uniform(-0.08, 0.08, (n, 2))
    elastic = rng.uniform(-1, 1, (n, 2, 4, 4)) * rng.uniform(0, 0.06, (n, 1, 1, 1))
    out = torch.empty(n, 1, size, size)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        x = glyphs[fonts[lo:hi], labels[lo:hi]][:, None].clone()  # (b, 1, 64, 64)
        s = torch.from_numpy(stroke[lo:hi])
        for k in (1, 2, 3):
            grow = s >= k
            if grow.any():
                x[grow] = F.max_pool2d(x[grow], 3, 1, 1)
        thin = s < 0
        if thin.any():
            eroded = -F.max_pool2d(-x[thin], 3, 1, 1)
            keep = eroded.flatten(1).sum(1) >= 0.4 * x[thin].flatten(1).sum(1)
            x[thin] = torch.where(keep[:, None, None, None], eroded, x[thin])
        # inverse map (output -> input coordinates) of: shear, anisotropic scale, rotation, shift
        a, sc, asp, sh = (torch.from_numpy(v[lo:hi]) for v in (angle, scale, aspect, shear))
        cos, sin = torch.cos(a), torch.sin(a)
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        scl = torch.diag_embed(torch.stack([sc * asp, sc / asp], -1))
        shr = torch.eye(2, dtype=torch.float64).repeat(hi - lo, 1, 1)
        shr[:, 0, 1] = sh
        forward = rot @ scl @ shr
        inverse = torch.linalg.inv(forward)
        t = torch.from_numpy(shift[lo:hi])
        theta = torch.cat([inverse, -(inverse @ t[:, :, None])], dim=2).float()
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        field = F.interpolate(torch.from_numpy(elastic[lo:hi]).float(), size=x.shape[-2:], mode="bicubic", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = F.adaptive_avg_pool2d(x, size) if x.shape[-1] != size else x
        x = x.clamp(0, 1)
        x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)  # contrast: the brightest pixel is full ink
        out[lo:hi] = x * 2 - 1
    return ImageSet(out.contiguous(), torch.from_numpy(labels.astype(np.int64)), 10, f"font_digits/{split}")


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
    """``"digits"``, ``"font_digits"`` (train 20,000 / test 5,000) or ``"patches"`` -> (train, val)."""
    if name == "digits":
        return load_digits_split(**kwargs)
    if name == "font_digits":
        seed = kwargs.pop("seed", 0)
        if kwargs:
            raise ValueError(f"font_digits takes only seed=, got {sorted(kwargs)}")
        return load_font_digits("train", seed=seed), load_font_digits("test", seed=seed)
    if name == "patches":
        return load_patches_split(**kwargs)
    raise ValueError(f"unknown dataset {name!r}; expected 'digits', 'font_digits' or 'patches'")
