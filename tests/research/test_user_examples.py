"""The examples a user starts from: ``examples/minimal_autoencoder.py`` (with its PNG), the image loading of
``examples/image_folder.py`` (pixel modes, 16-bit), each entry point's ``--help`` as a module and as a path.
The trainer itself: ``test_train_tokenizer.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from examples import minimal_autoencoder
from examples.image_folder import ImageError, RandomCrops, list_images, load_image, save_grid

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = ("minimal_autoencoder", "train_tokenizer", "end_to_end")


def test_minimal_autoencoder_trains_decodes_indices_and_saves_a_png(tmp_path, capsys):
    out = minimal_autoencoder.main(["--steps", "30", "--out", str(tmp_path / "recon.png")])
    indices = out["indices"]
    assert indices.shape == (297, 2, 2) and indices.dtype == torch.int64 and int(indices.max()) < 1000
    assert 5.0 < out["psnr"] < 60.0 and 0.0 < out["utilization"] <= 1.0
    printed = capsys.readouterr().out
    assert "decoded PSNR" in printed and str(tmp_path / "recon.png") in printed
    png = np.asarray(Image.open(tmp_path / "recon.png"))
    assert png.shape == (2 * 8 * 4, 16 * 8 * 4) and png.dtype == np.uint8  # 2 rows of 16 digits, 8x8 pixels zoomed x4
    assert png[: 8 * 4].std() > 10  # the real digits are drawn, not a blank image


def test_minimal_autoencoder_bad_arguments_are_one_error_line(capsys):
    for argv, needle in ((["--steps", "0"], "--steps must be >= 1"), (["--out", "x.jpg"], "--out must name a .png")):
        with pytest.raises(SystemExit) as exit_:
            minimal_autoencoder.main(argv)
        assert exit_.value.code == 2 and needle in capsys.readouterr().err


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Five small images of different sizes and formats (PNG and JPEG, one greyscale) in nested folders."""
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        h, w = 24 + 7 * i, 40 - 3 * i
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([(np.sin(x / (2 + i)) + 1) * 127, (np.cos(y / (3 + i)) + 1) * 127, rng.integers(0, 255, (h, w))], -1).astype(np.uint8)
        img = Image.fromarray(rgb).convert("L") if i == 3 else Image.fromarray(rgb)
        img.save(folder / ("more" if i == 4 else "") / (f"img{i}.png" if i % 2 == 0 else f"img{i}.jpg"))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_image_folder_listing_and_loading(image_folder):
    paths = list_images(image_folder)
    assert [p.name for p in paths] == ["img0.png", "img1.jpg", "img2.png", "img3.jpg", "img4.png"]  # nested, sorted, no .txt
    x = load_image(paths[3], 16)  # greyscale -> RGB, resized and centre-cropped
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and -1.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_random_crops_depend_on_seed_epoch_and_number_only(image_folder):
    paths = list_images(image_folder)
    crops = RandomCrops(paths, 16, 8, crops_per_image=3, seed=0)
    assert len(crops) == 15 and crops[(0, 4)].shape == (3, 8, 8)
    assert torch.equal(crops[(0, 4)], RandomCrops(paths, 16, 8, 3, seed=0)[(0, 4)])  # any process or worker cuts the same crop
    assert not torch.equal(crops[(0, 4)], crops[(1, 4)])  # another epoch, another crop
    image = load_image(paths[4 // 3], 16)  # crop 4 is from image 1
    windows = image.unfold(1, 8, 1).unfold(2, 8, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 8, 8)
    crop = crops[(0, 4)]
    assert any(torch.equal(crop, w) or torch.equal(crop, w.flip(-1)) for w in windows)


def ramp16(tmp_path: Path, suffix: str) -> Path:
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))  # left black .. right white
    path = tmp_path / f"ramp16{suffix}"
    Image.fromarray(ramp).save(path)
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path, suffix):
    path = ramp16(tmp_path, suffix)
    assert Image.open(path).mode.startswith("I;16")
    x = load_image(path, 64)
    row = x[0, 32]
    assert torch.equal(x[0], x[2])
    assert float(row[0]) == pytest.approx(-1.0, abs=1e-3) and float(row[-1]) == pytest.approx(1.0, abs=1e-3)
    assert float(row[32]) == pytest.approx(2 * 32 / 63 - 1, abs=0.02)  # the middle is mid-grey, not white
    assert float(x.mean()) == pytest.approx(0.0, abs=0.02)
    assert len(torch.unique(row)) == 64  # full precision: no two columns of the ramp collapse


def test_transparency_palette_and_cmyk(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (255, 0, 0, 255)  # left half opaque red, right half fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    x = load_image(tmp_path / "rgba.png", 8)
    assert torch.equal(x[:, :, :4], torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 8, 4))
    assert torch.equal(x[:, :, 4:], torch.ones(3, 8, 4))  # composited onto white
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8).repeat(4, 0).repeat(4, 1), "P")
    palette.putpalette([0, 0, 255, 0, 255, 0])
    palette.save(tmp_path / "p.png")
    x = load_image(tmp_path / "p.png", 8)
    assert torch.equal(x[:, 0, 0], torch.tensor([-1.0, -1.0, 1.0])) and torch.equal(x[:, 0, 7], torch.tensor([-1.0, 1.0, -1.0]))
    palette.save(tmp_path / "pt.png", transparency=0)  # colour 0 (blue) transparent -> white
    assert torch.equal(load_image(tmp_path / "pt.png", 8)[:, 0, 0], torch.ones(3))
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # red in CMYK
    x = load_image(tmp_path / "cmyk.jpg", 8)
    assert float(x[0].mean()) > 0.8 and float(x[1:].mean()) < -0.8


def test_unreadable_and_float_images_are_clear_errors(tmp_path):
    Image.fromarray(np.zeros((8, 8), dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageError, match="mode F"):
        load_image(tmp_path / "f.tif", 8)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="cannot read image.*bad.png"):
        load_image(tmp_path / "bad.png", 8)


def test_save_grid_rows(tmp_path):
    rows = [torch.full((3, 3, 4, 5), -1.0), torch.full((3, 3, 4, 5), 1.0)]
    save_grid(tmp_path / "g.png", rows, pad=2)
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (2 * 6 + 2, 3 * 7 + 2, 3)
    assert (grid[2:6, 2:7] == 0).all() and (grid[8:12, 2:7] == 255).all() and not (tmp_path / "g.png.partial").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_help_as_module_and_as_path(name, tmp_path):
    """``python -m examples.<name> --help`` from the repository root and ``python <root>/examples/<name>.py --help`` from elsewhere."""
    env = dict(os.environ, PYTHONPATH="")  # the repository root comes from the module mode's cwd or the script's own fix only
    for argv, cwd in (([sys.executable, "-m", f"examples.{name}", "--help"], ROOT),
                      ([sys.executable, str(ROOT / "examples" / f"{name}.py"), "--help"], tmp_path)):
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.startswith("usage:") and "Traceback" not in proc.stderr
        assert "``" not in proc.stdout  # no reST markup in help
