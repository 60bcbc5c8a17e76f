"""The examples a user starts from: ``examples/minimal_autoencoder.py`` and ``examples/train_tokenizer.py``
(train on a folder of images, resume, encode to a ``.npy``), each in a tiny configuration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from examples import minimal_autoencoder, train_tokenizer
from examples.image_folder import grid_crops, list_images, load_image


def test_minimal_autoencoder_trains_and_decodes_indices(capsys):
    out = minimal_autoencoder.main(["--steps", "30"])
    indices = out["indices"]
    assert indices.shape == (297, 2, 2) and indices.dtype == torch.int64 and int(indices.max()) < 1000
    assert 5.0 < out["psnr"] < 60.0 and 0.0 < out["utilization"] <= 1.0
    assert "decoded PSNR" in capsys.readouterr().out


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


def tiny_training(images: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return ["train", "--images", str(images), "--out", str(out), "--epochs", str(epochs), "--image-size", "16", "--patch", "8",
            "--channels", "4", "4", "8", "--levels", "8", "5", "5", "5", "--crops-per-image", "4", "--batch-size", "4", "--threads", "1", *extra]


def test_image_folder_loading(image_folder):
    paths = list_images(image_folder)
    assert [p.name for p in paths] == ["img0.png", "img1.jpg", "img2.png", "img3.jpg", "img4.png"]  # nested, sorted, no .txt
    x = load_image(paths[3], 16)  # greyscale -> RGB, resized and centre-cropped
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and -1.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert grid_crops(x[None].repeat(2, 1, 1, 1), 8).shape == (8, 3, 8, 8)


def test_train_resume_and_encode(image_folder, tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_tokenizer.main(tiny_training(image_folder, straight, 2)) == 0
    assert train_tokenizer.main(tiny_training(image_folder, resumed, 1)) == 0
    assert "validation PSNR" in capsys.readouterr().out
    assert train_tokenizer.main(tiny_training(image_folder, resumed, 1)) == 2  # an existing checkpoint is not overwritten
    assert "pass --resume" in capsys.readouterr().err
    assert train_tokenizer.main(tiny_training(image_folder, resumed, 2, "--resume")) == 0
    history = json.loads((resumed / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert h["val_psnr"] > 0 and 0.0 < h["val_utilization"] <= 1.0 and 0.0 < h["train_utilization"] <= 1.0
    # one epoch, then --resume for the second, is the same training as two epochs at once
    a, _, _, _ = train_tokenizer.load(straight / "tokenizer.safetensors", None)
    b, _, _, info = train_tokenizer.load(resumed / "tokenizer.safetensors", None)
    assert info["epoch"] == 2 and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert json.loads((straight / "history.json").read_text())["history"] == history
    # other settings on --resume are refused, not mixed into the run
    assert train_tokenizer.main(tiny_training(image_folder, resumed, 3, "--resume", "--lr", "5e-3")) == 2
    assert "another configuration" in capsys.readouterr().err

    out = tmp_path / "tokens.npy"
    assert train_tokenizer.main(["encode", "--images", str(image_folder), "--checkpoint", str(resumed / "tokenizer.safetensors"),
                                 "--out", str(out)]) == 0
    tokens = np.load(out)
    assert tokens.shape == (5, 4, 4) and tokens.dtype == np.uint16 and int(tokens.max()) < 1000  # 8*5*5*5 = 1,000 codes fit uint16
    assert (tmp_path / "tokens.files.txt").read_text().split() == [str(p) for p in list_images(image_folder)]
    with torch.no_grad():  # the indices are the tokenizer's, image by image
        _, expected = b.eval().encode(load_image(list_images(image_folder)[2], 16)[None])
    assert np.array_equal(tokens[2], expected[0].numpy())


def test_index_dtype_and_clear_errors(tmp_path, capsys):
    assert train_tokenizer.index_dtype(1000) == np.uint16 and train_tokenizer.index_dtype(2**16) == np.uint16
    assert train_tokenizer.index_dtype(2**16 + 1) == np.int32 and train_tokenizer.index_dtype(2**40) == np.int64
    (tmp_path / "one").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "one" / "a.png")
    assert train_tokenizer.main(tiny_training(tmp_path / "one", tmp_path / "out", 1)) == 2
    assert "need at least 2 images" in capsys.readouterr().err
    assert train_tokenizer.main(tiny_training(tmp_path / "missing", tmp_path / "out", 1)) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "one" / "b.png").write_bytes(b"not a png")
    Image.new("RGB", (20, 20)).save(tmp_path / "one" / "c.png")
    assert train_tokenizer.main(tiny_training(tmp_path / "one", tmp_path / "out", 1)) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "b.png" in err
