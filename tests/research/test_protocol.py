"""examples/metrics.py: the calibrated protocol (KID, bootstrap intervals, paired differences, the evaluator)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from examples.data import load_font_digits
from examples.metrics import (
    FeatureClassifier,
    ProtocolEvaluator,
    _weighted_stats,
    bootstrap_fd_kid,
    frechet_distance,
    frechet_from_stats,
    gaussian_stats,
    kernel_inception_distance,
    paired_difference,
)


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
