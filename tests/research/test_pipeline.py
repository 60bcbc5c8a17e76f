"""examples/pipeline.py: the stages as library functions (what the demo and the studies share)."""

from __future__ import annotations

import torch

from examples import pipeline as P
from examples.data import ImageSet, load_digits_split
from examples.training import CPU, train

ENV = CPU
TINY = dict(
    classifier=dict(steps=3, batch_size=16, lr=1e-3, width=8, feature_dim=16),
    tokenizer=dict(steps=3, batch_size=16, lr=1e-3, channels=[8, 8, 16], blocks=1, l1_weight=0.0, l2_weight=1.0),
    ar=dict(steps=3, batch_size=16, lr=1e-3, dim=32, depth=1, heads=2, class_dropout=0.1, dropout=0.0),
    diffusion=dict(steps=3, batch_size=16, lr=1e-3, dim=32, depth=1, heads=2, patch_size=1, class_dropout=0.1, sample_steps=2,
                   sampler="euler", cfg_scale=1.5),
)


def small_digits(n: int = 64):
    train_set, val = load_digits_split()
    return ImageSet(train_set.images[:n], train_set.labels[:n], 10, "digits"), val


def test_stages_train_and_sample_with_the_right_shapes():
    train_set, _ = small_digits()
    clf, losses = P.train_classifier(train_set, TINY["classifier"], ENV, seed=0)
    assert len(losses) == 3 and not clf.training
    for kind in ("fsq", "ifsq", "erf_equal"):
        tok, _ = P.train_tokenizer(kind, [5] * 4, [2, 2], TINY["tokenizer"], train_set, ENV, seed=0)
        assert P.encode_tokens(tok, train_set.images[:5]).shape == (5, 16, 2)
    labels = P.balanced_labels(10, 10)
    ar, _ = P.train_ar(tok, train_set, TINY["ar"], ENV, seed=0)
    assert ar.vocab_sizes == [25, 25]
    images = P.sample_ar(ar, tok, labels, cfg_scale=2.0, seed=0, env=ENV)
    assert images.shape == (10, 1, 16, 16) and float(images.abs().max()) <= 1.0
    dit, normalizer, _ = P.train_dit(tok, train_set, TINY["diffusion"], ENV, seed=0)
    codes = P.sample_dit(dit, normalizer, labels, TINY["diffusion"], seed=0, env=ENV)
    assert codes.shape == (10, 4, 4, 4)
    assert P.decode_codes(tok, codes).shape == (10, 1, 16, 16)
    assert P.random_token_images(tok, 7, 4, seed=0).shape == (7, 1, 16, 16)


def test_build_then_train_equals_the_stage_function():
    """A model built by ``build_*`` (e.g. to load a checkpoint into) starts from the same weights as the stage trains."""
    train_set, _ = small_digits()
    tok, _ = P.train_tokenizer("ifsq", [5] * 4, [2, 2], TINY["tokenizer"], train_set, ENV, seed=1)
    ar_trained, losses = P.train_ar(tok, train_set, TINY["ar"], ENV, seed=3)
    ar = P.build_ar(tok, TINY["ar"], 4, seed=3)
    losses2 = train(ar, P.ar_loss, (train_set.labels, P.encode_tokens(tok, train_set.images)), TINY["ar"], ENV, 3, "ar")
    assert losses == losses2
    assert all(torch.equal(a, b) for a, b in zip(ar.state_dict().values(), ar_trained.state_dict().values()))
    a = P.sample_ar(ar, tok, P.balanced_labels(10, 10), 1.5, seed=0, env=ENV)
    b = P.sample_ar(ar_trained, tok, P.balanced_labels(10, 10), 1.5, seed=0, env=ENV)
    assert torch.equal(a, b)


def test_repa_is_off_by_default_and_changes_nothing():
    from examples.ar import ARTransformer

    kwargs = dict(vocab_sizes=[25, 25], seq_len=16, num_classes=10, dim=32, depth=2, heads=2)
    torch.manual_seed(0)
    plain = ARTransformer(**kwargs)
    torch.manual_seed(0)
    off = ARTransformer(**kwargs, repa_dim=0, repa_weight=3.0)
    assert plain.state_dict().keys() == off.state_dict().keys() and not hasattr(off, "repa_projector")
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), off.state_dict().values()))
    labels, tokens, targets = torch.arange(4), torch.randint(0, 25, (4, 16, 2)), torch.randn(4, 16, 8)
    torch.manual_seed(1)
    a = plain.train().loss(labels, tokens)
    torch.manual_seed(1)
    b = off.train().loss(labels, tokens, targets=targets)  # targets are ignored when REPA is off
    assert torch.equal(a, b)


def test_repa_trains_the_alignment():
    train_set, _ = small_digits(128)
    tok, _ = P.train_tokenizer("ifsq", [5] * 4, [2, 2], TINY["tokenizer"], train_set, ENV, seed=0)
    encoder, _ = P.train_classifier(train_set, dict(TINY["classifier"], width=8), ENV, seed=5)  # not the evaluation network
    targets = P.repa_targets(encoder, train_set.images)
    assert targets.shape == (128, 16, 16) and abs(float(targets.mean())) < 1e-4
    cfg = dict(TINY["ar"], steps=40, lr=3e-3, repa_layer=1, repa_weight=1.0)
    ar, losses = P.train_ar(tok, train_set, cfg, ENV, seed=0, repa_encoder=encoder)
    assert ar.repa_layer == 1 and ar.repa_projector[-1].out_features == 16
    parts = {}
    with torch.no_grad():
        ar.loss(train_set.labels, P.encode_tokens(tok, train_set.images), targets, parts=parts)
    assert parts["repa"] < -0.3  # aligned: mean cosine similarity above 0.3 (0 at initialization)
    assert sum(losses[-5:]) < sum(losses[:5])
    images = P.sample_ar(ar, tok, P.balanced_labels(10, 10), 2.0, seed=0, env=ENV)  # sampling ignores the projector
    assert images.shape == (10, 1, 16, 16)
