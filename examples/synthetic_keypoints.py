"""Synthetic keypoint regression data (no downloads): the stand-in for WFLW / MPII.

make_keypoint_images: 32x32 colour images of 5 keypoints with label noise and outlier
labels, the task of the training benchmark (benchmarks/train_keypoints.py).

make_keypoint_data: each sample is a template of K 2-D keypoints under a random similarity transform
(rotation, scale, translation). The network sees only a fixed random nonlinear embedding
of the pose latents, so it must learn to invert it. Labels carry
  - heteroscedastic, anisotropic, rotated Gaussian noise: per keypoint covariance
    R(phi) diag(s^2, (s/ratio)^2) R(phi)^T with phi = pose angle + a per-keypoint angle
    and s growing with a per-sample "difficulty" latent that the network can see;
  - gross outliers: with probability `outlier_fraction` a keypoint label is replaced by
    a uniform point in [-2, 2]^2 (a wrong annotation).
The clean keypoints are kept for measuring the location error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

INPUT_DIM = 32


@dataclass
class KeypointData:
    inputs: torch.Tensor  # (N, INPUT_DIM)
    labels: torch.Tensor  # (N, K, 2) noisy labels (with outliers)
    clean: torch.Tensor  # (N, K, 2) noise-free keypoints
    is_outlier: torch.Tensor  # (N, K) bool
    noise_cov: torch.Tensor  # (N, K, 2, 2) the label-noise covariance (outliers excluded)


def template(num_keypoints: int) -> torch.Tensor:
    """K points on a closed curve with some interior points, unit scale, (K, 2)."""
    t = torch.linspace(0, 2 * math.pi, num_keypoints + 1)[:-1]
    radius = 0.6 + 0.25 * torch.cos(3 * t)
    return torch.stack([radius * torch.cos(t), 0.8 * radius * torch.sin(t)], dim=-1)


def _rotation(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _noisy_labels(clean, R, stds, outlier_fraction: float, half_width: float, gen):
    """Labels of keypoints clean (N, K, 2): Gaussian noise R diag(stds) z (R (N, K, 2, 2)
    rotations, stds broadcastable to (N, K, 2)), then with probability outlier_fraction a
    uniform point of [-half_width, half_width]^2 instead. Returns (noisy labels, labels,
    is_outlier (N, K), noise covariance R diag(stds^2) R^T)."""
    noise_cov = (R * stds.unsqueeze(-2) ** 2) @ R.transpose(-1, -2)
    noise = (R @ (stds * torch.randn(clean.shape, generator=gen)).unsqueeze(-1)).squeeze(-1)
    noisy = clean + noise
    is_outlier = torch.rand(clean.shape[:-1], generator=gen) < outlier_fraction
    wrong = 2 * half_width * torch.rand(clean.shape, generator=gen) - half_width
    return noisy, torch.where(is_outlier.unsqueeze(-1), wrong, noisy), is_outlier, noise_cov


def make_keypoint_data(
    num_samples: int,
    num_keypoints: int = 8,
    outlier_fraction: float = 0.2,
    anisotropy: float = 4.0,
    noise_scale: float = 0.08,
    seed: int = 0,
    mirror: bool = False,
) -> KeypointData:
    """Draw a data set. The embedding (the "camera") is fixed across seeds so train and
    test sets from different seeds share it.

    mirror=True renders every sample mirrored (x -> -x): the image shows keypoints
    M (s R(a) T + t) = s R(-a) (M T) + M t with M = diag(-1, 1), so the input embeds
    (-a, M t) and a mirror flag, and labels and noise covariances are mirrored too. The
    same seed with mirror=False/True gives the same poses, noise draws and outliers, which
    is what test-time augmentation sees.
    """
    gen = torch.Generator().manual_seed(seed)
    embed_gen = torch.Generator().manual_seed(12345)
    latent_dim = 7
    W = torch.randn(INPUT_DIM, latent_dim, generator=embed_gen) * 1.2
    b = torch.randn(INPUT_DIM, generator=embed_gen) * 0.3
    kp_angle = torch.rand(num_keypoints, generator=embed_gen) * math.pi

    angle = (torch.rand(num_samples, generator=gen) - 0.5) * (math.pi / 2)
    scale = 0.8 + 0.4 * torch.rand(num_samples, generator=gen)
    shift = 0.3 * torch.randn(num_samples, 2, generator=gen)
    difficulty = torch.rand(num_samples, generator=gen)

    clean = scale.view(-1, 1, 1) * template(num_keypoints) @ _rotation(angle).transpose(-1, -2)
    clean = clean + shift.unsqueeze(1)
    sigma = noise_scale * (0.25 + difficulty)  # (N,)
    R = _rotation(angle.view(-1, 1) + kp_angle)  # (N, K, 2, 2)
    diag = torch.stack([sigma, sigma / anisotropy], -1).unsqueeze(1).expand(-1, num_keypoints, -1)
    _, labels, is_outlier, noise_cov = _noisy_labels(clean, R, diag, outlier_fraction, 2.0, gen)

    flag = torch.zeros(num_samples)
    if mirror:
        M = torch.tensor([-1.0, 1.0])
        clean, labels = clean * M, labels * M
        noise_cov = noise_cov * torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # M S M^T
        angle, shift, flag = -angle, shift * M, torch.ones(num_samples)
    latents = torch.stack([torch.cos(angle), torch.sin(angle), scale, shift[:, 0], shift[:, 1], difficulty, flag], -1)
    inputs = torch.tanh(latents @ W.T + b) + 0.01 * torch.randn(num_samples, INPUT_DIM, generator=gen)
    return KeypointData(inputs, labels, clean, is_outlier, noise_cov)


# --------------------------------------------------------------------------- images
IMAGE_SIZE = 32
IMAGE_KEYPOINTS = 5
# One colour per keypoint (RGB): what identifies it in the image.
KEYPOINT_COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])


@dataclass
class KeypointImages:
    """Images (N, 3, S, S) with K = 5 keypoints each, coordinates (x, y) in [-1, 1]
    (pixel i's centre at (2i + 1)/S - 1, x to the right, y down)."""

    images: torch.Tensor  # (N, 3, S, S)
    labels: torch.Tensor  # (N, K, 2) training labels: true + label noise, outliers replaced
    clean_labels: torch.Tensor  # (N, K, 2) true + label noise (what an outlier-free annotator gives)
    true: torch.Tensor  # (N, K, 2) the keypoint positions the image was rendered from
    is_outlier: torch.Tensor  # (N, K) bool
    noise_cov: torch.Tensor  # (N, K, 2, 2) the label-noise covariance


def _image_template() -> torch.Tensor:
    """K = 5 points of an irregular star (distinct radii), unit scale, (5, 2)."""
    t = torch.arange(IMAGE_KEYPOINTS) * (2 * math.pi / IMAGE_KEYPOINTS)
    radius = torch.tensor([1.0, 0.7, 0.9, 0.6, 0.8])
    return torch.stack([radius * torch.cos(t), radius * torch.sin(t)], dim=-1)


def make_keypoint_images(num_samples: int, outlier_fraction: float = 0.1, seed: int = 0,
                         size: int = IMAGE_SIZE) -> KeypointImages:
    """Synthetic keypoint images: the benchmark task of a small soft-argmax CNN.

    Each image shows 5 coloured Gaussian blobs (std 1.5 px, one colour per keypoint) at the
    points of a star under a random rotation (any angle), scale (0.35..0.6) and shift
    (+-0.25), on Gaussian pixel noise. A per-image difficulty u ~ U[0, 1] the network can
    see lowers the contrast (1 - 0.6 u) and raises the pixel noise (std 0.1 + 0.25 u) and
    the label noise: per keypoint a rotated anisotropic Gaussian with standard deviations
    (s, s/2), s = 0.01 + 0.04 u (0.16..0.8 px), its axis turning with the figure. With
    probability `outlier_fraction` a label is replaced by a uniform point of the image
    (a wrong annotation). Deterministic given seed.
    """
    g = torch.Generator().manual_seed(seed)
    K = IMAGE_KEYPOINTS
    angle = (2 * torch.rand(num_samples, generator=g) - 1) * math.pi
    scale = 0.35 + 0.25 * torch.rand(num_samples, generator=g)
    shift = (2 * torch.rand(num_samples, 2, generator=g) - 1) * 0.25
    difficulty = torch.rand(num_samples, generator=g)
    true = scale.view(-1, 1, 1) * _image_template() @ _rotation(angle).transpose(-1, -2) + shift.unsqueeze(1)

    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    blob_var = (1.5 * 2.0 / size) ** 2
    # separable Gaussian blobs: exp(-(dx^2 + dy^2) / 2v) = exp(-dx^2/2v) exp(-dy^2/2v)
    bx = torch.exp(-((coords.view(1, 1, -1) - true[..., 0:1]) ** 2) / (2 * blob_var))  # (N, K, S) over x
    by = torch.exp(-((coords.view(1, 1, -1) - true[..., 1:2]) ** 2) / (2 * blob_var))  # (N, K, S) over y
    contrast = 1.0 - 0.6 * difficulty
    images = torch.einsum("nky,nkx,kc->ncyx", by, bx, KEYPOINT_COLOURS) * contrast.view(-1, 1, 1, 1)
    images = images + (0.1 + 0.25 * difficulty).view(-1, 1, 1, 1) * torch.randn(num_samples, 3, size, size, generator=g)

    sigma = 0.01 + 0.04 * difficulty
    R = _rotation(angle.view(-1, 1) + torch.arange(K) * (math.pi / K))  # (N, K, 2, 2)
    stds = torch.stack([sigma, 0.5 * sigma], dim=-1).unsqueeze(1)  # (N, 1, 2)
    clean_labels, labels, is_outlier, noise_cov = _noisy_labels(true, R, stds, outlier_fraction, 1.0, g)
    return KeypointImages(images, labels, clean_labels, true, is_outlier, noise_cov)
