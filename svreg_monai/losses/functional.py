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
"""Stateless core of the spatially varying regularisation: the weighted diffusion term and the weight priors.

Every function returns one value per sample, shape ``(B,)``; the loss modules in
:mod:`svreg_monai.losses.regularization` apply the MONAI-style ``reduction`` on top. Because every sample has the
same number of voxels, the batch mean of these values equals the mean over all elements that the reference
implementation computes.
"""

from __future__ import annotations

import torch

from svreg_monai.utils.validation import (
    check_ddf,
    check_finite,
    check_per_sample_value,
    check_tensor,
    check_weight_map,
)

__all__ = ["PENALTIES", "spatially_varying_diffusion", "beta_prior", "gaussian_prior"]

PENALTIES = ("l2", "l1")


def _check_prior_weight(weight: torch.Tensor) -> torch.Tensor:
    check_tensor(weight, "weight", ndim=(4, 5))
    if weight.shape[1] != 1:
        raise ValueError(f"weight must have shape (B, 1, *S), got {tuple(weight.shape)}.")
    return check_finite(weight, "weight")


def spatially_varying_diffusion(
    ddf: torch.Tensor, weight: torch.Tensor | None = None, penalty: str = "l2"
) -> torch.Tensor:
    """Voxel-wise weighted diffusion regulariser ``mean_x[w(x) |grad u(x)|^2]`` by forward differences.

    For each spatial axis ``a``, the forward difference ``d_a u(x) = u(x + e_a) - u(x)`` is squared (``"l2"``) or
    taken in absolute value (``"l1"``), multiplied by the weight at the *forward* voxel ``w(x + e_a)`` (as the
    reference implementation does), and averaged over channels and voxels; the result is the mean over axes.
    With ``weight=None`` this is the plain (unweighted) diffusion regulariser.

    Args:
        ddf: ``(B, N, *S)`` displacement in voxels, every spatial size >= 2.
        weight: ``(B, 1, *S)`` (or ``(1, 1, *S)``) non-negative voxel-wise weight, or None for ones.
        penalty: ``"l2"`` or ``"l1"``.

    Returns:
        ``(B,)`` regulariser value per sample, in voxels^2 (``"l2"``) or voxels (``"l1"``) per voxel.
    """
    check_ddf(ddf, "ddf")
    if penalty not in PENALTIES:
        raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}.")
    if any(s < 2 for s in ddf.shape[2:]):
        raise ValueError(f"every spatial size of ddf must be >= 2 for forward differences, got {tuple(ddf.shape)}.")
    if weight is not None:
        check_weight_map(weight, ddf)
    n = ddf.ndim - 2
    total = ddf.new_zeros(ddf.shape[0])
    for axis in range(2, 2 + n):
        length = ddf.shape[axis]
        diff = ddf.narrow(axis, 1, length - 1) - ddf.narrow(axis, 0, length - 1)
        term = diff * diff if penalty == "l2" else diff.abs()
        if weight is not None:
            term = term * weight.narrow(axis, 1, length - 1)
        total = total + term.flatten(1).mean(dim=1)
    return total / n


def beta_prior(weight: torch.Tensor, alpha: float | torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Negative log Beta(alpha, 1) prior on a weight map, up to a constant: ``(1 - alpha) * mean(log w)``.

    The weight is clamped to ``[eps, 1]`` first. For ``alpha > 1`` the term pushes the weights towards 1 (strong
    regularisation), balancing the data term's push towards 0.

    Args:
        weight: ``(B, 1, *S)`` weight map in ``(0, 1]``.
        alpha: ``alpha >= 1``, a float or a ``(B,)`` tensor (one value per sample, e.g. for hypernetworks).
        eps: lower clamp of the weight.

    Returns:
        ``(B,)`` prior term per sample.
    """
    _check_prior_weight(weight)
    alpha_b = check_per_sample_value(alpha, "alpha", weight.shape[0], weight, minimum=1.0)
    log_w = torch.log(torch.clamp(weight, eps, 1.0)).flatten(1).mean(dim=1)
    return (1.0 - alpha_b) * log_w


def gaussian_prior(
    weight: torch.Tensor,
    inv_sigma2: float | torch.Tensor,
    mean: float = 1.0,
    eps: float = 1e-6,
    max_weight: float = 5.0,
) -> torch.Tensor:
    """Negative log Gaussian prior on a weight map, up to a constant: ``inv_sigma2 * mean((w - mean)^2)``.

    The weight is clamped to ``[eps, max_weight]`` first.

    Args:
        weight: ``(B, 1, *S)`` positive weight map.
        inv_sigma2: ``1 / sigma^2 >= 0``, a float or a ``(B,)`` tensor (one value per sample).
        mean: the prior mean of the weight.
        eps: lower clamp of the weight.
        max_weight: upper clamp of the weight.

    Returns:
        ``(B,)`` prior term per sample.
    """
    _check_prior_weight(weight)
    inv_b = check_per_sample_value(inv_sigma2, "inv_sigma2", weight.shape[0], weight, minimum=0.0)
    sq = (torch.clamp(weight, eps, max_weight) - mean) ** 2
    return inv_b * sq.flatten(1).mean(dim=1)
