# Copyright (c) svreg-monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Intensity-based affine registration of two images in world coordinates (multi-resolution, torch).

Why our own and not ITK's ``ImageRegistrationMethodv4``: both images stay on their own grids (no resampling of the
moving image before the search) and the similarity is the package's. On the real brain pairs of
``benchmarks/bench_affine_prealignment.py`` (1 thread; skull-stripped or masked images) it was as accurate or better
(mean tissue Dice 0.539 vs 0.506 over three pairs), about 3x faster (3 s vs 5-20 s), and insensitive to a random
±15° / ±20 mm / ±10 % start (0.1 mm vs 5-12 mm). Both images must show the same thing: a skull-stripped moving
image against a fixed image with skull is stretched to the head (give masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor

from svreg_monai.losses.functional_similarity import local_normalized_cross_correlation_loss
from svreg_monai.utils.validation import check_option
from svreg_monai.utils.world import check_affine, sample_at_world_points, world_coordinates

__all__ = ["AffineRegistrationResult", "affine_register", "center_of_mass", "downsample_to_spacing"]

SIMILARITIES = ("ncc", "lncc")


class AffineRegistrationResult(NamedTuple):
    """Result of :func:`affine_register`.

    Attributes:
        matrix: ``(N+1, N+1)`` float64 world-to-world map (fixed -> moving points, RAS millimetres):
            ``warped(p) = moving(matrix @ p)``.
        initial_matrix: the starting matrix (centre-of-mass alignment or the one given).
        losses: the final loss at each level (coarse to fine).
    """

    matrix: np.ndarray
    initial_matrix: np.ndarray
    losses: list[float]


def center_of_mass(image: torch.Tensor, affine: np.ndarray | torch.Tensor) -> np.ndarray:
    """Intensity-weighted centre of a ``(1, *S)`` non-negative image, in world millimetres ``(N,)``."""
    w = image[0].detach().double().clamp_min(0)
    a = check_affine(affine, spatial_dims=w.ndim)
    n = w.ndim
    total = float(w.sum())
    index = np.empty(n)
    for i in range(n):  # the voxel-space centre, one marginal per axis
        marginal = w.sum(dim=tuple(j for j in range(n) if j != i)) if n > 1 else w
        positions = torch.arange(w.shape[i], dtype=torch.float64)
        index[i] = float((marginal * positions).sum() / total) if total > 0 else (w.shape[i] - 1) / 2
    return a[:n, :n] @ index + a[:n, n]


def downsample_to_spacing(
    image: torch.Tensor, affine: np.ndarray | torch.Tensor, spacing: float
) -> tuple[torch.Tensor, np.ndarray]:
    """Average-pool a ``(C, *S)`` image by ``round(spacing / voxel size)`` per axis (at least 1).

    Returns:
        the pooled image and its voxel-to-world matrix (voxel centres of the pooled blocks).
    """
    a = check_affine(affine, spatial_dims=image.ndim - 1)
    n = image.ndim - 1
    sizes = np.linalg.norm(a[:n, :n], axis=0)
    factors = [max(1, min(int(round(spacing / s)), d)) for s, d in zip(sizes, image.shape[1:])]
    if all(f == 1 for f in factors):
        return image, a
    pool = F.avg_pool3d if n == 3 else F.avg_pool2d
    pooled = pool(image[None].float(), kernel_size=factors, stride=factors, ceil_mode=True, count_include_pad=False)[0]
    scale = np.eye(n + 1)
    scale[:n, :n] = np.diag(factors)
    scale[:n, n] = [(f - 1) / 2 for f in factors]
    return pooled, a @ scale


def _ncc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x - x.mean()
    y = y - y.mean()
    return -(x * y).sum() / (x.square().sum() * y.square().sum()).sqrt().clamp_min(1e-12)


def affine_register(
    moving: torch.Tensor,
    moving_affine: np.ndarray | torch.Tensor,
    fixed: torch.Tensor,
    fixed_affine: np.ndarray | torch.Tensor,
    spacings: Sequence[float] = (8.0, 4.0),
    iterations: Sequence[int] = (150, 60),
    learning_rate: float = 0.01,
    similarity: str = "ncc",
    kernel_size: int = 5,
    initial_matrix: np.ndarray | None = None,
) -> AffineRegistrationResult:
    """Register ``moving`` to ``fixed`` with a 12-parameter (3D) affine map in world coordinates.

    The images stay on their own grids: at each level both are average-pooled to about ``spacings[k]``
    millimetres, the fixed level's voxel centres ``p`` are mapped to ``T(p)`` and the moving level is sampled there
    (trilinear), and ``T`` is optimised with Adam for ``iterations[k]`` steps. ``T(p) = (I + D)(p - c_f) + c_f + t``,
    started from the translation that aligns the intensity centres of mass (``c_f``, ``c_m``) unless
    ``initial_matrix`` is given; ``D`` and ``t / 10 mm`` are the parameters, so one learning rate suits both.

    Args:
        moving: ``(1, *S_m)`` moving image, intensities normalised (e.g. to [0, 1]), background 0.
        moving_affine: its ``(N+1, N+1)`` RAS voxel-to-world matrix.
        fixed: ``(1, *S_f)`` fixed image, normalised like ``moving``.
        fixed_affine: its voxel-to-world matrix.
        spacings: working voxel size (mm) of each level, coarse to fine.
        iterations: Adam steps per level.
        learning_rate: Adam's learning rate.
        similarity: ``"ncc"`` (global normalised cross-correlation over the fixed level) or ``"lncc"`` (the
            package's local NCC, window ``kernel_size`` voxels).
        kernel_size: LNCC window.
        initial_matrix: starting world map (fixed -> moving), or None for centre-of-mass alignment.

    Returns:
        :class:`AffineRegistrationResult`.

    Raises:
        ValueError: for mismatched levels, a non-positive spacing or step count, or an unknown similarity.
    """
    check_option(similarity, SIMILARITIES, "similarity")
    spacings = [float(s) for s in spacings]
    iterations = [int(i) for i in iterations]
    if len(spacings) != len(iterations) or not spacings:
        raise ValueError(f"spacings {spacings} and iterations {iterations} must be non-empty and of equal length.")
    if min(spacings) <= 0 or min(iterations) < 0:
        raise ValueError(f"spacings must be > 0 and iterations >= 0, got {spacings} and {iterations}.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
    n = fixed.ndim - 1
    if moving.ndim != n + 1 or moving.shape[0] != 1 or fixed.shape[0] != 1:
        raise ValueError(
            f"moving and fixed must be (1, *S) images with the same number of spatial axes, got "
            f"{tuple(moving.shape)} and {tuple(fixed.shape)}."
        )
    a_m = check_affine(moving_affine, "moving_affine", spatial_dims=n)
    a_f = check_affine(fixed_affine, "fixed_affine", spatial_dims=n)
    moving = convert_to_tensor(moving, track_meta=False).detach().float().cpu()
    fixed = convert_to_tensor(fixed, track_meta=False).detach().float().cpu()

    c_f = center_of_mass(fixed, a_f)
    if initial_matrix is None:
        init = np.eye(n + 1)
        init[:n, n] = center_of_mass(moving, a_m) - c_f
    else:
        init = check_affine(initial_matrix, "initial_matrix", spatial_dims=n)
    # parameters about the fixed centre: T(p) = L (p - c_f) + c_f + t
    lin0 = torch.as_tensor(init[:n, :n])
    t0 = torch.as_tensor(init[:n, :n] @ c_f + init[:n, n] - c_f)
    delta = torch.zeros(n, n, dtype=torch.float64, requires_grad=True)
    shift = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.Adam([delta, shift], lr=learning_rate)
    centre = torch.as_tensor(c_f)

    losses: list[float] = []
    for spacing, steps in zip(spacings, iterations):
        fixed_l, a_fl = downsample_to_spacing(fixed, a_f, spacing)
        moving_l, a_ml = downsample_to_spacing(moving, a_m, spacing)
        points = world_coordinates(a_fl, fixed_l.shape[1:], dtype=torch.float64) - centre
        target = fixed_l[None]
        loss = torch.tensor(float("nan"))
        for _ in range(steps + 1):
            lin = lin0 + delta
            q = points @ lin.T + centre + t0 + 10.0 * shift
            warped = sample_at_world_points(moving_l.double(), a_ml, q).float()[None]
            if similarity == "ncc":
                loss = _ncc(warped, target)
            else:
                loss = local_normalized_cross_correlation_loss(warped, target, kernel_size=kernel_size)
            if _ == steps:
                break
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        losses.append(float(loss.detach()))

    with torch.no_grad():
        lin = (lin0 + delta).numpy()
        matrix = np.eye(n + 1)
        matrix[:n, :n] = lin
        matrix[:n, n] = c_f + t0.numpy() + 10.0 * shift.numpy() - lin @ c_f
    return AffineRegistrationResult(matrix, init, losses)
