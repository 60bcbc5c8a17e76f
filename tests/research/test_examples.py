"""Tests of the end-to-end examples (``examples/``): building blocks, bad input, the smoke
preset end to end, and the tokenizer stage under ``torch.distributed.run`` with 2 processes.
The subprocess tests are marked ``slow`` (``-m "not slow"`` leaves them out).

Whole file: about two minutes on a 2-core CPU (most of it the two subprocess runs).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from examples import end_to_end, pipeline
from examples.ar import ARTransformer
from examples.data import FONT_DIGIT_SPLITS, FONT_FILES, PHOTOS, VAL_PHOTOS, load_dataset, load_digits_split, load_font_digits, load_patches_split
from examples.diffusion import DiT, LatentNormalizer, snap_to_grid
from examples.metrics import FeatureClassifier, class_accuracy, frechet_distance, psnr, ssim
from examples.tokenizer import Tokenizer
from ifsq_quant import FSQ, iFSQ

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = ROOT / "examples" / "end_to_end.py"


def run_script(args: list[str], timeout: float, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable] + (launcher or []) + [str(SCRIPT)] + args
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- data


def test_digits_split_shapes_range_and_determinism():
    train, val = load_digits_split()
    assert train.images.shape == (1497, 1, 16, 16) and val.images.shape == (300, 1, 16, 16)
    assert train.images.dtype == torch.float32
    assert float(train.images.min()) >= -1.0 and float(train.images.max()) <= 1.0
    assert float(train.images.min()) == -1.0 and float(train.images.max()) > 0.9  # the full range is used
    assert torch.equal(val.labels.bincount(minlength=10), torch.full((10,), 30))
    assert train.labels.bincount(minlength=10).min() > 100
    train2, val2 = load_digits_split()
    assert torch.equal(train.images, train2.images) and torch.equal(val.labels, val2.labels)
    _, val_other = load_digits_split(seed=1)
    assert not torch.equal(val.images, val_other.images)


def test_font_digits_determinism_shapes_and_balance():
    assert FONT_DIGIT_SPLITS["train"] >= 20_000 and FONT_DIGIT_SPLITS["test"] >= 5_000 and len(FONT_FILES) == 21
    a = load_font_digits("train", n=1003, seed=0)
    assert a.images.shape == (1003, 1, 16, 16) and a.images.dtype == torch.float32 and a.labels.dtype == torch.int64
    assert float(a.images.min()) == -1.0 and float(a.images.max()) <= 1.0 and float(a.images.max()) > 0.9
    counts = a.labels.bincount(minlength=10)
    assert counts.tolist() == [101, 101, 101] + [100] * 7  # balanced: n // 10 each, the remainder to the first classes
    assert len(set(a.labels[:20].tolist())) > 3  # shuffled, not class-major
    b = load_font_digits("train", n=1003, seed=0)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(load_font_digits("train", n=1003, seed=1).images, a.images)
    test = load_font_digits("test", n=1003, seed=0)  # an independent draw, not a copy of the training images
    assert float((test.images - a.images).abs().mean()) > 0.1
    nearest = torch.cdist(test.images[:200].flatten(1), a.images.flatten(1)).min(1).values
    assert float(nearest.min()) > 0.0
    ink = (a.images > 0).flatten(1).float().mean(1)  # every image has ink and background
    assert float(ink.min()) > 0.01 and float(ink.max()) < 0.8
    assert load_font_digits("val", n=7, size=8).images.shape == (7, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown split"):
        load_font_digits("training")


@pytest.mark.slow
def test_font_digits_default_splits():
    train, test = load_dataset("font_digits")
    assert train.images.shape == (20_000, 1, 16, 16) and test.images.shape == (5_000, 1, 16, 16)
    assert train.labels.bincount(minlength=10).tolist() == [2000] * 10
    assert test.labels.bincount(minlength=10).tolist() == [500] * 10


def test_patches_split_holds_out_whole_photographs():
    train, val = load_patches_split()
    assert train.images.shape[1:] == (3, 32, 32) and val.images.shape[1:] == (3, 32, 32)
    assert len(train) > 1000 and len(val) > 100
    assert float(train.images.min()) >= -1.0 and float(train.images.max()) <= 1.0
    val_ids = {i for i, (_, name) in enumerate(PHOTOS) if name in VAL_PHOTOS}
    assert set(val.labels.tolist()) == val_ids
    assert not set(train.labels.tolist()) & val_ids
    train2, _ = load_patches_split()
    assert torch.equal(train.images, train2.images)


# ----------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("quantizer_class", [FSQ, iFSQ])
def test_tokenizer_shapes_and_index_round_trip(quantizer_class):
    torch.manual_seed(0)
    tok = Tokenizer(quantizer_class(levels=[17] * 4, index_groups=[2, 2]), in_channels=1)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    tok.eval()
    recon, codes, indices = tok(x)
    assert recon.shape == x.shape and codes.shape == (3, 4, 4, 4)
    assert indices.shape == (3, 4, 4, 2) and indices.dtype == torch.int64
    assert int(indices.max()) < 17 * 17
    assert float(codes.detach().abs().max()) <= 1.0
    torch.testing.assert_close(tok.decode_indices(indices), tok.decode(codes))
    assert tok.level_indices(indices).shape == (3, 4, 4, 4)
    assert tok.usage.num_samples == 0  # counted in training only
    tok.train()
    loss = tok.loss(x, tok(x)[0])
    loss.backward()
    assert tok.usage.num_samples == 3 * 4 * 4
    assert tok.encoder.layers[0].weight.grad.abs().sum() > 0  # straight-through gradient reaches the encoder


def test_tokenizer_on_rgb_patches():
    tok = Tokenizer(iFSQ(levels=[17] * 4, index_groups=[2, 2]), in_channels=3, channels=(16, 16, 32))
    recon, codes, indices = tok(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert recon.shape == (2, 3, 32, 32) and codes.shape == (2, 4, 8, 8) and indices.shape == (2, 8, 8, 2)


# ----------------------------------------------------------------------------- AR


@pytest.mark.parametrize("cfg_scale, top_k, temperature", [(1.0, None, 1.0), (2.5, None, 0.9), (3.0, 20, 1.0)])
def test_ar_kv_cache_sampling_equals_full_recompute(cfg_scale, top_k, temperature):
    torch.manual_seed(0)
    model = ARTransformer([289, 289], seq_len=16, num_classes=10, dim=64, depth=2, heads=4)
    labels = torch.tensor([0, 3, 7, 9])
    kwargs = dict(cfg_scale=cfg_scale, top_k=top_k, temperature=temperature, return_logits=True)
    tokens_cached, logits_cached = model.sample(labels, generator=torch.Generator().manual_seed(5), use_cache=True, **kwargs)
    tokens_full, logits_full = model.sample(labels, generator=torch.Generator().manual_seed(5), use_cache=False, **kwargs)
    assert tokens_cached.shape == (4, 16, 2)
    assert torch.equal(tokens_cached, tokens_full)
    for a, b in zip(logits_cached, logits_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if cfg_scale == 1.0 and top_k is None:  # the teacher-forced forward gives the same logits
        model.eval()
        for a, b in zip(model(labels, tokens_cached), logits_cached):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_ar_loss_and_top_k():
    torch.manual_seed(0)
    model = ARTransformer([289, 289], seq_len=16, num_classes=10, dim=64, depth=2, heads=4)
    tokens = torch.randint(0, 289, (8, 16, 2))
    loss = model.loss(torch.randint(0, 10, (8,)), tokens)
    assert abs(float(loss.detach()) - math.log(289)) < 0.5  # near-uniform predictions at initialization
    _, logits = model.sample(torch.arange(4), top_k=5, return_logits=True)
    assert int(torch.isfinite(logits[0]).sum(-1).max()) == 5


# ----------------------------------------------------------------------------- diffusion


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_diffusion_sampler_shape(method):
    torch.manual_seed(0)
    model = DiT(in_channels=4, input_size=4, num_classes=10, dim=64, depth=2, heads=4)
    x0 = torch.randn(6, 4, 4, 4)
    assert torch.count_nonzero(model(x0, torch.rand(6), torch.arange(6))) == 0  # adaLN-Zero: zero output at init
    loss = model.loss(x0, torch.arange(6))
    loss.backward()
    out = model.sample(torch.arange(6), steps=3, cfg_scale=2.0, method=method, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 4, 4, 4) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="method"):
        model.sample(torch.arange(2), method="rk4")


def test_snap_to_grid_and_normalizer():
    q = iFSQ(levels=[17] * 4, index_groups=[2, 2])
    codes, _ = q(torch.randn(2, 4, 4, 4) * 2)
    assert torch.equal(snap_to_grid(codes + 0.02, q), codes)
    assert float(snap_to_grid(codes * 5, q).abs().max()) == 1.0
    norm = LatentNormalizer(4).fit(codes)
    torch.testing.assert_close(norm.denormalize(norm.normalize(codes)), codes)


# ----------------------------------------------------------------------------- metrics


def test_psnr_ssim():
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    assert psnr(x, x) == math.inf
    assert psnr(x, x + 0.02) == pytest.approx(10 * math.log10(4 / 0.02**2), abs=1e-3)
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(x, torch.rand(4, 1, 16, 16) * 2 - 1) < 0.5
    assert ssim(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)) < 0.5  # RGB works
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(x, x[:2])


def test_frechet_distance():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((500, 16))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    shifted = f + 3.0
    assert frechet_distance(f, shifted) == pytest.approx(16 * 9.0, rel=1e-6)
    assert frechet_distance(f, rng.standard_normal((500, 16)) * 2) > 10


def test_classifier_features_and_accuracy():
    torch.manual_seed(0)
    clf = FeatureClassifier(in_channels=1, image_size=16, num_classes=10, feature_dim=32)
    x = torch.rand(5, 1, 16, 16)
    assert clf.features(x).shape == (5, 32) and clf(x).shape == (5, 10)
    pred = clf.eval()(x).argmax(1)
    assert class_accuracy(clf, x, pred) == 1.0


def test_training_is_deterministic():
    train, _ = load_digits_split()
    env = pipeline.Env(rank=0, world=1, device=torch.device("cpu"))
    cfg = dict(steps=5, batch_size=16, lr=1e-3)
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model = FeatureClassifier(feature_dim=16)
        losses.append(pipeline.train(model, pipeline.classifier_loss, (train.images, train.labels), cfg, env, 0, "t"))
    assert losses[0] == losses[1]


# ----------------------------------------------------------------------------- bad input


def assert_clean_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_unknown_preset_is_a_clear_error(tmp_path):
    assert_clean_error(run_script(["--preset", "huge", "--out", str(tmp_path)], timeout=120), "invalid choice: 'huge'")


@pytest.mark.slow
def test_unknown_stage_is_a_clear_error(tmp_path):
    assert_clean_error(run_script(["--preset", "smoke", "--stages", "gan", "--out", str(tmp_path)], timeout=120), "unknown stage")


@pytest.mark.slow
def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    t0 = time.perf_counter()
    proc = run_script(["--preset", "smoke", "--out", str(blocker / "out")], timeout=120)
    assert_clean_error(proc, "is not writable")
    assert "classifier" not in proc.stderr  # no training started
    assert time.perf_counter() - t0 < 60


@pytest.mark.slow
def test_corrupt_checkpoint_is_a_clear_error_before_training(tmp_path):
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    for name in ("classifier", "tokenizer_ifsq"):
        (ckpt / f"{name}.safetensors").write_bytes(b"\x00\x01 definitely not safetensors" * 10)
    proc = run_script(["--preset", "smoke", "--stages", "ar", "--out", str(tmp_path)], timeout=120)
    assert_clean_error(proc, "is corrupt or not a safetensors file")
    assert "ar:" not in proc.stderr and not (ckpt / "ar.safetensors").exists()


def test_missing_and_mismatched_checkpoints(tmp_path):
    model = FeatureClassifier(feature_dim=16)
    with pytest.raises(pipeline.ExampleError, match="not found"):
        pipeline.read_checkpoint(tmp_path / "none.safetensors", {})
    pipeline.save_checkpoint(tmp_path / "c.safetensors", model, {"a": 1})
    with pytest.raises(pipeline.ExampleError, match="another configuration"):
        pipeline.read_checkpoint(tmp_path / "c.safetensors", {"a": 2})
    fresh = FeatureClassifier(feature_dim=16)
    pipeline.load_checkpoint(tmp_path / "c.safetensors", fresh, {"a": 1})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


# ----------------------------------------------------------------------------- end to end


def test_full_preset_patch_tokenizers_wiring(tmp_path, monkeypatch):
    """The ``full`` preset's natural-patch tokenizers, with a few steps (in process)."""
    tiny = pipeline._preset(classifier=dict(steps=2), tokenizer=dict(steps=2),
                              patches=dict(pipeline.PRESETS["full"]["patches"], steps=2, channels=[8, 8, 16], blocks=1))
    monkeypatch.setitem(end_to_end.PRESETS, "tiny", tiny)
    args = end_to_end.parse_args(["--preset", "smoke", "--stages", "classifier,tokenizers", "--out", str(tmp_path)])
    args.preset = "tiny"
    threads = torch.get_num_threads()
    try:
        metrics = end_to_end.run(args)
    finally:
        torch.set_num_threads(threads)  # run() sets the thread count of this (pytest's) process
    for kind in ("fsq", "ifsq"):
        m = metrics["tokenizers_patches"][kind]
        assert math.isfinite(m["psnr"]) and 0.0 < m["utilization"] <= 1.0
    assert (tmp_path / "patch_reconstructions.png").is_file()
    assert "natural 32x32 patches" in (tmp_path / "report.md").read_text()


SMOKE_BUDGET_S = 180


@pytest.mark.slow
def test_smoke_preset_end_to_end(tmp_path):
    t0 = time.perf_counter()
    proc = run_script(["--preset", "smoke", "--out", str(tmp_path)], timeout=SMOKE_BUDGET_S + 60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < SMOKE_BUDGET_S, f"smoke preset took {elapsed:.0f} s"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for kind in ("fsq", "ifsq"):
        m = metrics["tokenizers"][kind]
        for key in ("psnr", "ssim", "utilization", "codebook_usage"):
            assert isinstance(m[key], float) and math.isfinite(m[key]), (kind, key, m[key])
        assert 0.0 < m["utilization"] <= 1.0 and 0.0 < m["codebook_usage"] <= 1.0
    for gen in ("ar", "diffusion"):
        assert math.isfinite(metrics[gen]["fd"]) and 0.0 <= metrics[gen]["accuracy"] <= 1.0
    assert {"fd_real", "fd_reconstruction", "fd_random_tokens"} <= set(metrics["baselines"])
    assert metrics["baselines"]["fd_real"] < metrics["baselines"]["fd_random_tokens"]
    assert metrics["config"]["preset"] == "smoke" and metrics["seconds"]["total"] > 0
    for png in ("reconstructions.png", "ar_samples.png", "diffusion_samples.png", "bin_usage.png", "training_curves.png"):
        assert (tmp_path / png).stat().st_size > 1000
        assert f"]({png})" in (tmp_path / "report.md").read_text()
    assert "iFSQ tokenizer PSNR" in proc.stdout  # the summary table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_tokenizer_stage(tmp_path):
    launcher = ["-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={free_port()}"]
    proc = run_script(["--preset", "smoke", "--stages", "tokenizers", "--out", str(tmp_path)], timeout=240, launcher=launcher)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["world_size"] == 2
    assert set(metrics["tokenizers"]) == {"fsq", "ifsq"}
    tok_cfg = end_to_end.PRESETS["smoke"]["tokenizer"]
    for kind in ("fsq", "ifsq"):
        m = metrics["tokenizers"][kind]
        assert math.isfinite(m["psnr"]) and 0.0 < m["utilization"] <= 1.0
        # usage counted on both ranks' shards, then all-reduced: every training latent of the global batch
        assert m["train_usage"]["samples"] == tok_cfg["steps"] * tok_cfg["batch_size"] * 16
        assert (tmp_path / "checkpoints" / f"tokenizer_{kind}.safetensors").is_file()
    assert "ar" not in metrics and "diffusion" not in metrics
