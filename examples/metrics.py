"""Image and generation metrics for the examples.

- ``psnr`` / ``ssim``: reconstruction quality of images in [-1, 1] (SSIM from scikit-image).
- ``FeatureClassifier``: a small CNN trained on the real training split; its penultimate
  layer *before* the ReLU is the feature space of the Fréchet distance (post-ReLU features
  have dead units, which make the covariance singular).
- ``frechet_distance``: the Fréchet distance between two Gaussians fitted to feature sets,
  with a scipy matrix square root (the FID formula, in this classifier's feature space).
- ``class_accuracy``: the fraction of class-conditional samples the classifier assigns to
  the class they were generated for.
- The calibrated protocol: ``kernel_inception_distance`` (unbiased MMD^2, cubic polynomial
  kernel), ``bootstrap_fd_kid`` (95 % percentile bootstrap intervals), ``paired_difference``
  (paired seeds, Student-t interval) and ``ProtocolEvaluator``: a feature network trained on a
  split no generator sees, held-out real test images, guidance chosen on a validation split,
  and calibration rows at the generated n (real vs real, a memorizer, decoded random tokens).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> float:
    """Mean per-image PSNR in dB. x, y: (n, c, h, w) in a range of width ``data_range``.

    An image identical to its reference has infinite PSNR; the mean is then ``inf``.
    """
    if x.shape != y.shape:
        raise ValueError(f"psnr: shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)  # (n,)
    with np.errstate(divide="ignore"):
        per_image = 10.0 * torch.log10(data_range**2 / mse)
    return float(per_image.mean())


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> float:
    """Mean per-image SSIM (scikit-image, 7x7 Gaussian-free window). x, y: (n, c, h, w)."""
    from skimage.metrics import structural_similarity

    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    xs = x.detach().cpu().double().numpy()
    ys = y.detach().cpu().double().numpy()
    values = [
        structural_similarity(a, b, data_range=data_range, channel_axis=0) for a, b in zip(xs, ys)
    ]
    return float(np.mean(values))


class FeatureClassifier(nn.Module):
    """Small CNN: images (b, c, s, s) -> logits (b, num_classes); ``features`` -> (b, feature_dim).

    Two conv stages (each two 3x3 convs and a 2x2 max-pool), then a linear layer to
    ``feature_dim`` whose pre-activation output is the feature space, then ReLU, dropout
    and the class head.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 16, num_classes: int = 10, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.config = dict(in_channels=in_channels, image_size=image_size, num_classes=num_classes, width=width, feature_dim=feature_dim)
        w = width
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.to_features = nn.Linear(2 * w * (image_size // 4) ** 2, feature_dim)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, c, s, s) -> pre-activation features (b, feature_dim)."""
        return self.to_features(self.convs(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, c, s, s) -> logits (b, num_classes)."""
        return self.head(self.dropout(F.relu(self.features(x))))


@torch.no_grad()
def extract_features(classifier: FeatureClassifier, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """images (n, c, s, s) -> features (n, feature_dim) float64 numpy, in eval mode."""
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    out = [classifier.features(images[i : i + batch_size].to(device)).double().cpu() for i in range(0, len(images), batch_size)]
    classifier.train(was_training)
    return torch.cat(out).numpy()


@torch.no_grad()
def predict(classifier: FeatureClassifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """images (n, c, s, s) -> predicted classes (n,) int64."""
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    out = [classifier(images[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    classifier.train(was_training)
    return torch.cat(out)


def class_accuracy(classifier: FeatureClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` (n, c, s, s) the classifier assigns to ``labels`` (n,)."""
    return float((predict(classifier, images) == labels.cpu()).double().mean())


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features (n, d) -> mean (d,), covariance (d, d) (unbiased)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors of shape (n, d), got {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features_a (n, d) and features_b (m, d).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, with the matrix square root
    from ``scipy.linalg.sqrtm``; if it is numerically singular a small ridge is added
    (as in the reference FID code). The result is clipped at 0 against round-off.
    """
    mu_a, cov_a = gaussian_stats(features_a)
    mu_b, cov_b = gaussian_stats(features_b)
    diff = mu_a - mu_b
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        ridge = np.eye(cov_a.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
    covmean = np.real(covmean)
    fd = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean)
    return float(max(fd, 0.0))


# ----------------------------------------------------------------------------- the calibrated protocol
#
# FD and KID of generated samples against held-out real images, in the feature space of a network trained on
# a split that no generator sees, with bootstrap confidence intervals, calibration rows at the same n and the
# guidance scale chosen on a validation split. ``ProtocolEvaluator`` puts it together.


def _weighted_stats(features: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of the multiset with ``weights[i]`` copies of row i (None: each once)."""
    if weights is None:
        return gaussian_stats(features)
    n = weights.sum()
    mu = weights @ features / n
    centred = features - mu
    return mu, (centred * weights[:, None]).T @ centred / (n - 1)


def frechet_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """The Fréchet distance between N(mu_a, cov_a) and N(mu_b, cov_b) (see ``frechet_distance``)."""
    diff = mu_a - mu_b
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        ridge = np.eye(cov_a.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
    fd = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(np.real(covmean))
    return float(max(fd, 0.0))


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


def paired_difference(a: list[float], b: list[float], level: float = 0.95) -> dict:
    """Mean of the paired differences ``a[i] - b[i]`` (e.g. per seed) with a Student-t interval.

    With fewer than 2 pairs the interval is [nan, nan].
    """
    import scipy.stats

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"paired_difference needs two equal-length, non-empty lists, got {len(a)} and {len(b)}")
    mean = float(d.mean())
    if len(d) < 2:
        return dict(mean=mean, ci=[float("nan"), float("nan")], n=len(d), differences=d.tolist())
    half = float(scipy.stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return dict(mean=mean, ci=[mean - half, mean + half], n=len(d), differences=d.tolist())


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
