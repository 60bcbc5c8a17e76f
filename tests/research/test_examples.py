"""The examples' building blocks (``examples/``): data, the tokenizer, the AR transformer, the DiT, metrics,
the training loop and checkpoints. The demo's command line: ``test_end_to_end.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ifsq_quant
from examples import pipeline
from examples.ar import ARTransformer
from examples.checkpoints import load_checkpoint, read_checkpoint, read_config, save_checkpoint
from examples.data import PHOTOS, VAL_PHOTOS, load_dataset, load_digits_split, load_patches_split
from examples.diffusion import DiT, LatentNormalizer, snap_to_grid
from examples.metrics import FeatureClassifier, class_accuracy, frechet_distance, psnr, ssim
from examples.tokenizer import Tokenizer
from examples.training import CPU, ExampleError, train
from ifsq_quant import FSQ, iFSQ

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
    with pytest.raises(ValueError, match="unknown dataset"):  # the font digits are the studies' data (studies/font_digits.py)
        load_dataset("font_digits")


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
    train_set, _ = load_digits_split()
    cfg = dict(steps=5, batch_size=16, lr=1e-3)
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model = FeatureClassifier(feature_dim=16)
        losses.append(train(model, pipeline.classifier_loss, (train_set.images, train_set.labels), cfg, CPU, 0, "t"))
    assert losses[0] == losses[1]


# ----------------------------------------------------------------------------- checkpoints


def test_missing_mismatched_and_resumable_checkpoints(tmp_path):
    model = FeatureClassifier(feature_dim=16)
    with pytest.raises(ExampleError, match="not found"):
        read_checkpoint(tmp_path / "none.safetensors", {})
    save_checkpoint(tmp_path / "c.safetensors", model, {"a": 1}, losses=[2.5, 1.25])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # written under a temporary name, then renamed
    with pytest.raises(ExampleError, match="another configuration: a: 1 in the checkpoint, 2 here"):  # names the key
        read_checkpoint(tmp_path / "c.safetensors", {"a": 2})
    save_checkpoint(tmp_path / "nested.safetensors", model, {"a": 1, "b": {"c": 3, "d": 4}})
    with pytest.raises(ExampleError, match=r"another configuration: a: 1 in the checkpoint, \(absent\) here; b.c: 3 in the checkpoint, 5 here$"):
        read_checkpoint(tmp_path / "nested.safetensors", {"b": {"c": 5, "d": 4}})
    assert read_config(tmp_path / "c.safetensors") == {"a": 1}
    fresh = FeatureClassifier(feature_dim=16)
    info = load_checkpoint(tmp_path / "c.safetensors", fresh, {"a": 1})
    # the training losses travel with the weights; the package version too, and no vqp_version for a model without a quantizer
    assert info == {"config": {"a": 1}, "losses": [2.5, 1.25], "ifsq_quant_version": ifsq_quant.__version__, "vqp_version": None}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00 not safetensors" * 8)
    with pytest.raises(ExampleError, match="corrupt"):
        read_checkpoint(tmp_path / "bad.safetensors", None)
