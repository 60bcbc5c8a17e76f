"""Image and generation metrics for the examples.

- ``psnr`` / ``ssim``: reconstruction quality of images in [-1, 1] (SSIM from scikit-image).
- ``FeatureClassifier``: a small CNN trained on the real training split; its penultimate
  layer *before* the ReLU is the feature space of the Fréchet distance (post-ReLU features
  have dead units, which make the covariance singular).
- ``frechet_distance``: the Fréchet distance between two Gaussians fitted to feature sets,
  with a scipy matrix square root (the FID formula, in this classifier's feature space).
- ``class_accuracy``: the fraction of class-conditional samples the classifier assigns to
  the class they were generated for.

The studies' calibrated protocol (KID, bootstrap intervals, calibration rows) builds on these:
``studies/protocol.py``.
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
    """Fréchet distance between Gaussians fitted to features_a (n, d) and features_b (m, d) (see ``frechet_from_stats``)."""
    return frechet_from_stats(*gaussian_stats(features_a), *gaussian_stats(features_b))


def frechet_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """The Fréchet distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, with the matrix square root
    from ``scipy.linalg.sqrtm``; if it is numerically singular a small ridge is added
    (as in the reference FID code). The result is clipped at 0 against round-off.
    """
    diff = mu_a - mu_b
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        ridge = np.eye(cov_a.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
    fd = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(np.real(covmean))
    return float(max(fd, 0.0))
