"""Synthetic keypoint regression data (no downloads): the stand-in for WFLW / MPII.

Each sample is a template of K 2-D keypoints under a random similarity transform
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
    noise_cov = (R * diag.unsqueeze(-2) ** 2) @ R.transpose(-1, -2)
    noise = (R @ (diag * torch.randn(num_samples, num_keypoints, 2, generator=gen)).unsqueeze(-1)).squeeze(-1)
    labels = clean + noise
    is_outlier = torch.rand(num_samples, num_keypoints, generator=gen) < outlier_fraction
    wrong = 4 * torch.rand(num_samples, num_keypoints, 2, generator=gen) - 2
    labels = torch.where(is_outlier.unsqueeze(-1), wrong, labels)

    flag = torch.zeros(num_samples)
    if mirror:
        M = torch.tensor([-1.0, 1.0])
        clean, labels = clean * M, labels * M
        noise_cov = noise_cov * torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # M S M^T
        angle, shift, flag = -angle, shift * M, torch.ones(num_samples)
    latents = torch.stack([torch.cos(angle), torch.sin(angle), scale, shift[:, 0], shift[:, 1], difficulty, flag], -1)
    inputs = torch.tanh(latents @ W.T + b) + 0.01 * torch.randn(num_samples, INPUT_DIM, generator=gen)
    return KeypointData(inputs, labels, clean, is_outlier, noise_cov)
