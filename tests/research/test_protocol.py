"""The studies' calibrated protocol (``studies/protocol.py``: KID, bootstrap intervals, the evaluator), paired
differences (``studies/stats.py``) and the protocol's data (``studies/font_digits.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from examples.metrics import FeatureClassifier, frechet_distance, frechet_from_stats, gaussian_stats
from studies.font_digits import FONT_DIGIT_SPLITS, FONT_FILES, load_font_digits, load_splits
from studies.protocol import ProtocolEvaluator, _weighted_stats, bootstrap_fd_kid, kernel_inception_distance
from studies.stats import interval, paired_difference, seed_statistics


def test_fd_and_kid_of_a_set_with_itself():
    f = np.random.default_rng(0).standard_normal((300, 8))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    assert frechet_from_stats(*gaussian_stats(f), *gaussian_stats(f)) == pytest.approx(0.0, abs=1e-6)
    # weights of one per row are the plain statistics
    mu, cov = _weighted_stats(f, np.ones(len(f)))
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(cov, np.cov(f, rowvar=False))


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_otherwise():
    rng = np.random.default_rng(1)
    same = [kernel_inception_distance(rng.standard_normal((200, 8)), rng.standard_normal((300, 8))) for _ in range(30)]
    shifted = kernel_inception_distance(rng.standard_normal((200, 8)), rng.standard_normal((300, 8)) + 0.5)
    assert min(same) < 0 < max(same)  # unbiased: single estimates fall on both sides of 0
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    assert shifted > 10 * np.std(same)


def test_bootstrap_interval_contains_the_point_estimate():
    rng = np.random.default_rng(2)
    gen, real = rng.standard_normal((150, 6)) + 0.3, rng.standard_normal((400, 6))
    out = bootstrap_fd_kid(gen, real, n_boot=60, seed=0)
    assert out["fd"] == pytest.approx(frechet_distance(gen, real))
    assert out["kid"] == pytest.approx(kernel_inception_distance(gen, real))
    assert out["fd_ci"][0] <= out["fd"] <= out["fd_ci"][1]
    assert out["kid_ci"][0] <= out["kid"] <= out["kid_ci"][1]
    assert out["n_generated"] == 150 and out["n_real"] == 400
    assert bootstrap_fd_kid(gen, real, n_boot=60, seed=0) == out  # deterministic
    scaled = bootstrap_fd_kid(gen, real, n_boot=10, seed=0, kid_scale=0.5)
    assert scaled["kid"] == pytest.approx(kernel_inception_distance(gen * 0.5, real * 0.5)) and scaled["fd"] == out["fd"]


def test_paired_difference():
    d = paired_difference([3.0, 4.0, 5.0], [1.0, 2.0, 2.0])
    assert d["mean"] == pytest.approx(7 / 3) and d["n"] == 3
    assert d["ci"][0] < d["mean"] < d["ci"][1]
    assert d["ci"][0] > 0  # all three differences positive and close: the interval excludes 0
    single = paired_difference([1.0], [0.5])
    assert single["mean"] == 0.5 and all(math.isnan(v) for v in single["ci"])
    assert interval(d, 2) == f"+2.33 [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]" and interval(None, 2) == "–"
    stats = seed_statistics([dict(a=1.0, b=2.0), dict(a=3.0)], ("a", "b", "c"))
    assert stats == dict(a=2.0, a_std=pytest.approx(2**0.5), b=2.0, b_std=0.0)  # keys no run has are left out


def test_evaluator_calibration_rows_and_guidance_selection():
    torch.manual_seed(0)
    net = FeatureClassifier(feature_dim=8, width=8)
    test, val, ref, train = (load_font_digits(s, n=n) for s, n in (("test", 120), ("val", 60), ("reference", 60), ("train", 60)))
    ev = ProtocolEvaluator(net, test.images, test.labels, val.images, n_boot=20)
    assert np.mean((ev.test_features * ev.kid_scale) ** 2) == pytest.approx(1.0)
    rows = ev.calibration(50, ref.images, ref.labels, train.images, train.labels, random_tokens=torch.rand(50, 1, 16, 16) * 2 - 1)
    assert set(rows) == {"real_vs_real", "memorizer", "random_tokens"}
    for name, r in rows.items():
        assert r["fd_ci"][0] >= 0.0, name
        assert r["n_generated"] == 50 and r["n_real"] == 120 and r["fd_ci"][0] <= r["fd"] <= r["fd_ci"][1], name
    assert rows["random_tokens"]["accuracy"] is None and 0 <= rows["memorizer"]["accuracy"] <= 1
    assert rows["random_tokens"]["fd"] > rows["real_vs_real"]["fd"]
    with pytest.raises(ValueError, match="fewer than n"):
        ev.calibration(100, ref.images, ref.labels, train.images, train.labels)
    # guidance: the scale whose samples are closest to the validation split wins
    noise = torch.rand(60, 1, 16, 16) * 2 - 1
    best, fds = ev.select_guidance(lambda s: val.images if s == 2.0 else noise, [1.0, 2.0, 3.0])
    assert best == 2.0 and set(fds) == {1.0, 2.0, 3.0} and fds[2.0] == pytest.approx(0.0, abs=1e-6)
    calls = []

    def sample(labels, scale, seed):
        calls.append((len(labels), scale, seed))
        return (val.images if scale == 2.0 else noise)[: len(labels)]

    m = ev.measure(sample, [1.0, 2.0], num_val=20, num_generated=30, seed=7)
    assert m["guidance"] == 2.0 and set(m["guidance_val_fd"]) == {"1.0", "2.0"} and m["n_generated"] == 30 and m["n_real"] == 120
    assert calls == [(20, 1.0, 1007), (20, 2.0, 1007), (30, 2.0, 7)]  # validation with its own noise, then the test at the chosen scale


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
    assert {k: len(v) for k, v in load_splits(dict(val=12, test=7)).items()} == dict(val=12, test=7)


@pytest.mark.slow
def test_font_digits_default_splits():
    train, test = load_font_digits("train"), load_font_digits("test")
    assert train.images.shape == (20_000, 1, 16, 16) and test.images.shape == (5_000, 1, 16, 16)
    assert train.labels.bincount(minlength=10).tolist() == [2000] * 10
    assert test.labels.bincount(minlength=10).tolist() == [500] * 10
