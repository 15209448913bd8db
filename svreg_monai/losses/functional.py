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

The priors' negative log-likelihoods ``beta_prior`` and ``gaussian_prior`` live with the prior objects in
:mod:`svreg_monai.priors` and are re-exported here.

Every function returns one value per sample, shape ``(B,)``; the loss modules in
:mod:`svreg_monai.losses.regularization` apply the MONAI-style ``reduction`` on top. Because every sample has the
same number of voxels, the batch mean of these values equals the mean over all elements that the reference
implementation computes.
"""

from __future__ import annotations

import torch

from svreg_monai.priors import beta_prior, gaussian_prior
from svreg_monai.utils.validation import check_ddf, check_option, check_weight_map

__all__ = ["PENALTIES", "spatially_varying_diffusion", "beta_prior", "gaussian_prior"]

PENALTIES = ("l2", "l1")


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
    check_option(penalty, PENALTIES, "penalty")
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
