"""The calibrated protocol's data: 16x16 digits rendered from the fonts matplotlib ships, randomly deformed.

Any number of images, in independent, class-balanced splits (``FONT_DIGIT_SPLITS``: ``train`` 20,000 for
the tokenizers and generators, ``val`` 2,000 for choices such as guidance, ``test`` 5,000 that every FD /
KID is measured against, ``features`` 10,000 for the evaluation network only, ``reference`` 5,000 for
the real-vs-real calibration row). Deterministic: the same (split, n, seed, size) gives the same tensors.
Nothing is downloaded: the 21 TrueType fonts come inside matplotlib, rendering uses Pillow.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from examples.data import DIGITS_SIZE, ImageSet

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


def load_splits(sizes: dict[str, int], seed: int = 0) -> dict[str, ImageSet]:
    """``{split: n}`` -> ``{split: load_font_digits(split, n, seed)}``."""
    return {name: load_font_digits(name, n=n, seed=seed) for name, n in sizes.items()}
