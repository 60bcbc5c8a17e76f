"""The calibrated protocol: how every generation study measures generated images.

FD and KID of generated samples against held-out real images, in the feature space of a network
trained on a split that no generator sees, with bootstrap confidence intervals, calibration rows
at the same sample size (real vs real, a memorizer, decoded random tokens) and the guidance scale
chosen on a validation split, never on the test metric. ``ProtocolEvaluator`` puts it together.

- ``kernel_inception_distance``: the unbiased MMD^2 with KID's cubic polynomial kernel;
- ``bootstrap_fd_kid``: FD and KID with 95 % bootstrap intervals;
- ``ProtocolEvaluator``: the evaluation network, test and validation features, ``measure``
  (guidance chosen on validation, then the test metrics) and ``calibration``;
- ``add_arguments`` / ``configure``: the command-line options of the protocol's sizes;
- ``DemoEvaluation`` / ``configure_demo``: the end-to-end demo's simpler measurement (FD of a few hundred samples against
  the training digits, fixed guidance), the studies' ``--evaluation demo`` option.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from examples import pipeline as P
from examples.data import load_digits_split
from examples.metrics import FeatureClassifier, class_accuracy, extract_features, frechet_distance, frechet_from_stats, gaussian_stats
from examples.presets import PRESETS
from studies.harness import ENV, mode


def _weighted_stats(features: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of the multiset with ``weights[i]`` copies of row i (None: each once)."""
    if weights is None:
        return gaussian_stats(features)
    n = weights.sum()
    mu = weights @ features / n
    centred = features - mu
    return mu, (centred * weights[:, None]).T @ centred / (n - 1)


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel ``k(x, y) = (x . y / d + 1)^3`` between the rows of a (n, d) and b (m, d) -> (n, m)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _mmd2(k_aa: np.ndarray, k_bb: np.ndarray, k_ab: np.ndarray, w_a: np.ndarray | None = None, w_b: np.ndarray | None = None) -> float:
    """Unbiased MMD^2 from kernel matrices.

    With multiplicities ``w`` (a bootstrap resample) the within-set terms average over pairs of
    *different* original points, weighted ``w_i w_j``, so duplicated points never pair with
    themselves (that would add ``k(x, x)`` terms and bias the replicates upwards).
    """
    w_a = np.ones(k_aa.shape[0]) if w_a is None else w_a
    w_b = np.ones(k_bb.shape[0]) if w_b is None else w_b

    def within(k: np.ndarray, w: np.ndarray) -> float:
        return (w @ k @ w - (w * w) @ np.diag(k)) / (w.sum() ** 2 - (w * w).sum())

    return float(within(k_aa, w_a) + within(k_bb, w_b) - 2.0 * (w_a @ k_ab @ w_b) / (w_a.sum() * w_b.sum()))


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """KID: the unbiased estimate of MMD^2 with the cubic polynomial kernel between features_a (n, d) and features_b (m, d).

    Unbiased: its expectation is 0 when both sets come from one distribution (single values can be
    negative). Computed on all pairs (no subsets).
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    return _mmd2(polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b))


def bootstrap_fd_kid(gen: np.ndarray, real: np.ndarray, n_boot: int = 200, seed: int = 0, level: float = 0.95,
                     real_kernel: np.ndarray | None = None, kid_scale: float = 1.0) -> dict:
    """FD and KID of ``gen`` (n, d) against ``real`` (m, d) with bootstrap intervals.

    Each bootstrap replicate resamples both sets with replacement (multiplicities, so nothing is
    copied). Resampling duplicates points, which by itself moves FD up (its bias grows as the
    effective sample shrinks), so the replicates' median sits above the point estimate; the
    interval therefore takes the replicates' spread around their median and centres it on the
    point estimate: ``[est - (median - q_lo), est + (q_hi - median)]`` (FD's lower end clipped at
    0; near the floor, e.g. real vs real, the interval mostly shows resampling noise). The shift
    ``median - est`` is returned as ``fd_bootstrap_shift`` / ``kid_bootstrap_shift``.
    Returns fd, fd_ci [lo, hi], kid, kid_ci, n_generated, n_real, n_boot. ``real_kernel``:
    ``polynomial_kernel(real, real)``, when the caller has it already (it is the largest matrix;
    computed on ``real * kid_scale``). ``kid_scale``: KID is computed on the features times this
    factor (the cubic kernel is not scale-free; FD is computed on the features as they are).
    """
    gen, real = np.asarray(gen, np.float64), np.asarray(real, np.float64)
    k_rr = polynomial_kernel(real * kid_scale, real * kid_scale) if real_kernel is None else real_kernel
    k_gg, k_gr = polynomial_kernel(gen * kid_scale, gen * kid_scale), polynomial_kernel(gen * kid_scale, real * kid_scale)
    fd = frechet_distance(gen, real)
    kid = _mmd2(k_gg, k_rr, k_gr)
    rng = np.random.default_rng(seed)
    fds, kids = [], []
    n, m = len(gen), len(real)
    for _ in range(n_boot):
        w_g = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        w_r = np.bincount(rng.integers(0, m, m), minlength=m).astype(np.float64)
        fds.append(frechet_from_stats(*_weighted_stats(gen, w_g), *_weighted_stats(real, w_r)))
        kids.append(_mmd2(k_gg, k_rr, k_gr, w_g, w_r))
    q = [(1 - level) / 2 * 100, 50.0, (1 + level) / 2 * 100]
    out = dict(n_generated=n, n_real=m, n_boot=n_boot)
    for name, point, reps in (("fd", fd, fds), ("kid", kid, kids)):
        lo, med, hi = np.percentile(reps, q)
        out[name] = point
        lower = point - (med - lo)
        out[name + "_ci"] = [float(max(lower, 0.0) if name == "fd" else lower), float(point + (hi - med))]  # FD >= 0; KID is unbiased, may be < 0
        out[name + "_bootstrap_shift"] = float(med - point)
    return out


class ProtocolEvaluator:
    """The calibrated evaluation: feature network, held-out real test features, validation features.

    feature_net: a ``FeatureClassifier`` trained on images no generator sees (e.g. the
    ``features`` split of ``load_font_digits``); test_images (m, c, s, s) with test_labels:
    the held-out real images every generated set is compared with (m >= 5,000 in the full
    protocol); val_images: the validation split that guidance is chosen on (never the test).
    KID is computed on the features scaled by one factor, ``kid_scale``, that gives the test
    features a mean square of 1 per dimension (so ``x . y / d`` is of order 1 in the cubic kernel,
    as for the Inception features KID was defined on; unscaled, the small CNN's larger features
    make KID values of order 10^5).
    """

    def __init__(self, feature_net: FeatureClassifier, test_images: torch.Tensor, test_labels: torch.Tensor, val_images: torch.Tensor,
                 n_boot: int = 200, seed: int = 0):
        self.net = feature_net.eval()
        self.test_features = extract_features(feature_net, test_images)
        self.kid_scale = float(1.0 / np.sqrt(np.mean(self.test_features**2)))
        scaled = self.test_features * self.kid_scale
        self.test_kernel = polynomial_kernel(scaled, scaled)
        self.val_features = extract_features(feature_net, val_images)
        self.test_accuracy = class_accuracy(feature_net, test_images, test_labels)
        self.n_boot, self.seed = n_boot, seed

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        """FD, KID (95 % bootstrap intervals) against the test features; class accuracy if ``labels`` are given."""
        out = bootstrap_fd_kid(extract_features(self.net, images), self.test_features, self.n_boot, self.seed, real_kernel=self.test_kernel,
                               kid_scale=self.kid_scale)
        out["accuracy"] = class_accuracy(self.net, images, labels) if labels is not None else None
        return out

    def validation_fd(self, images: torch.Tensor) -> float:
        """FD against the validation features (what guidance is chosen on)."""
        return frechet_distance(extract_features(self.net, images), self.val_features)

    def select_guidance(self, sample_fn, scales: list[float]) -> tuple[float, dict[float, float]]:
        """``sample_fn(scale) -> images``: the scale with the lowest validation FD, and every scale's validation FD."""
        if not scales:
            raise ValueError("select_guidance needs at least one scale")
        fds = {float(s): self.validation_fd(sample_fn(s)) for s in scales}
        return min(fds, key=fds.get), fds

    def measure(self, sample, scales: list[float], num_val: int, num_generated: int, seed: int) -> dict:
        """``sample(labels, scale, seed) -> images``: the guidance scale chosen by validation FD (``num_val`` samples with
        their own noise, ``seed + 1000``), then the test metrics (``evaluate``) of ``num_generated`` samples at that scale."""
        val_labels = P.balanced_labels(num_val, 10)
        guidance, val_fds = self.select_guidance(lambda s: sample(val_labels, s, seed + 1000), scales)
        labels = P.balanced_labels(num_generated, 10)
        out = self.evaluate(sample(labels, guidance, seed), labels)
        return dict(out, guidance=guidance, guidance_val_fd={str(k): v for k, v in val_fds.items()})

    def calibration(self, n: int, reference: torch.Tensor, reference_labels: torch.Tensor, memorizer: torch.Tensor,
                    memorizer_labels: torch.Tensor, random_tokens: torch.Tensor | None = None) -> dict[str, dict]:
        """Calibration rows at the generated sample size ``n``: what FD/KID read for

        - ``real_vs_real``: n real images from a split disjoint from the test (the floor);
        - ``memorizer``: n training images of the generators, returned as "samples" (a perfect copier);
        - ``random_tokens``: n decoded uniformly random token grids (the ceiling), if given.
        """
        for name, images in (("reference", reference), ("memorizer", memorizer)):
            if len(images) < n:
                raise ValueError(f"calibration: {name} has {len(images)} images, fewer than n={n}")
        rows = dict(real_vs_real=self.evaluate(reference[:n], reference_labels[:n]), memorizer=self.evaluate(memorizer[:n], memorizer_labels[:n]))
        if random_tokens is not None:
            rows["random_tokens"] = self.evaluate(random_tokens[:n])
        return rows


def add_evaluation_argument(parser) -> None:
    """``--evaluation``: the calibrated protocol on font digits, or the demo's FD (the studies that have both)."""
    parser.add_argument("--evaluation", choices=["protocol", "demo"], default="protocol",
                        help="the calibrated protocol on font digits (default) or the demo's FD on scikit-learn's digits")


def add_arguments(parser: argparse.ArgumentParser, splits: tuple[str, ...]) -> None:
    """The protocol's sizes on the command line (small values make a study's smallest configuration, for tests)."""
    parser.add_argument("--steps", type=int, default=None, help="override the steps of every model (tests)")
    parser.add_argument("--split-sizes", type=int, nargs=len(splits), default=None, metavar=tuple(s.upper() for s in splits))
    parser.add_argument("--num-generated", type=int, default=None)
    parser.add_argument("--num-val-samples", type=int, default=None)
    parser.add_argument("--n-boot", type=int, default=None)


def configure(args: argparse.Namespace, configs: dict, models: tuple[str, ...], overrides: tuple[str, ...] = ()) -> dict:
    """The mode's configuration with the options of ``add_arguments`` applied: ``--steps`` for every model in
    ``models`` (and half of it as ``ar_eval_every`` where the config has one), ``--split-sizes``,
    and ``num_generated``, ``num_val_samples``, ``n_boot`` and ``overrides`` where given."""
    cfg = copy.deepcopy(configs[mode(args)])
    if args.steps:
        for k in models:
            cfg[k]["steps"] = args.steps
        if "ar_eval_every" in cfg:
            cfg["ar_eval_every"] = max(1, args.steps // 2)
    if args.split_sizes:
        cfg["splits"] = dict(zip(cfg["splits"], args.split_sizes))
    for key in ("num_generated", "num_val_samples", "n_boot", *overrides):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    return cfg


def configure_demo(args: argparse.Namespace, configs: dict) -> dict:
    """The ``--evaluation demo`` configuration of the mode, with ``--steps`` (every model) and ``--num-generated`` (its
    ``num_samples``) applied."""
    cfg = copy.deepcopy(configs[mode(args)])
    if args.steps:
        for k in ("classifier", "tokenizer", "ar", "diffusion"):
            cfg[k]["steps"] = args.steps
    if args.num_generated:
        cfg["num_samples"] = args.num_generated
    return cfg


class DemoEvaluation:
    """The end-to-end demo's measurement: scikit-learn's digits, FD of the samples against the 1,497 training
    images in the feature space of a small CNN trained on them, class accuracy, guidance fixed in advance.

    Cheaper and coarser than the protocol (the feature network has seen the real images, a few hundred
    samples, no intervals); the studies' ``--evaluation demo`` option. ``fd_real``: the real validation
    digits' FD, the floor at this sample size.
    """

    def __init__(self, classifier_cfg: dict):
        self.train_set, self.val_set = load_digits_split(n_val_per_class=PRESETS["quick"]["n_val_per_class"], seed=0)
        self.classifier, _ = P.train_classifier(self.train_set, classifier_cfg, ENV, seed=0)
        self.train_features = extract_features(self.classifier, self.train_set.images)
        self.fd_real = frechet_distance(extract_features(self.classifier, self.val_set.images), self.train_features)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """images (n, 1, 16, 16) generated for ``labels`` (n,) -> ``fd``, ``accuracy``."""
        return P.generated_metrics(self.classifier, images, labels, self.train_features)
