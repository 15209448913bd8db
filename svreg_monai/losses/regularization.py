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
"""MONAI-style loss modules for learned spatially varying regularisation (Chen et al., MedIA 2025).

The training objective of the method is ``similarity(m o phi, f) + lambda_max * mean_x[w(x) |grad u(x)|^2]
- log p(w)`` with a Beta(alpha, 1) or Gaussian prior ``p`` on the voxel-wise weight ``w``. The modules here are thin
wrappers around :mod:`svreg_monai.losses.functional`; each reduces the per-sample values like MONAI losses:
``"mean"`` (batch mean), ``"sum"`` (batch sum) or ``"none"`` (a ``(B,)`` tensor).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from svreg_monai.losses.functional import PENALTIES, spatially_varying_diffusion
from svreg_monai.priors import BetaPrior, GaussianPrior, WeightPrior, get_prior
from svreg_monai.utils.validation import check_option, check_per_sample_value

__all__ = [
    "SpatiallyVaryingDiffusionLoss",
    "BetaPriorLoss",
    "GaussianPriorLoss",
    "RegularizationLossOutput",
    "SpatiallyVaryingRegularizationLoss",
]


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == LossReduction.MEAN.value:
        return values.mean()
    if reduction == LossReduction.SUM.value:
        return values.sum()
    if reduction == LossReduction.NONE.value:
        return values
    raise ValueError(f'Unsupported reduction: {reduction}, available options are ["mean", "sum", "none"].')


def _check_min(value: float, name: str, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}.")
    return float(value)


class SpatiallyVaryingDiffusionLoss(_Loss):
    """Voxel-wise weighted diffusion regulariser ``mean_x[w(x) |grad u(x)|^2]`` (forward differences).

    See :func:`svreg_monai.losses.functional.spatially_varying_diffusion`. With ``weight=None`` it is the plain
    diffusion regulariser on forward differences (MONAI's ``DiffusionLoss`` uses central differences instead).

    Args:
        penalty: ``"l2"`` (squared differences, the method's default) or ``"l1"``.
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"`` for a ``(B,)`` tensor.

    Example::

        loss = SpatiallyVaryingDiffusionLoss()
        value = loss(ddf, weight)  # ddf (B, 3, H, W, D) in voxels, weight (B, 1, H, W, D)
    """

    def __init__(self, penalty: str = "l2", reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        check_option(penalty, PENALTIES, "penalty")
        self.penalty = penalty

    def forward(self, ddf: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            ddf: ``(B, N, *S)`` displacement in voxels.
            weight: ``(B, 1, *S)`` voxel-wise weight, or None (= ones).
        """
        return _reduce(spatially_varying_diffusion(ddf, weight, self.penalty), self.reduction)


class BetaPriorLoss(_Loss):
    """Negative log Beta(alpha, 1) prior on the weight map: ``(1 - alpha) * mean(log clamp(w, eps, 1))``.

    Args:
        alpha: default ``alpha >= 1``; ``forward`` may override it with a float or a ``(B,)`` tensor.
        eps: lower clamp of the weight before the logarithm.
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"`` for a ``(B,)`` tensor.
    """

    def __init__(self, alpha: float = 1.1, eps: float = 1e-6, reduction: LossReduction | str = LossReduction.MEAN):
        super().__init__(reduction=LossReduction(reduction).value)
        self.weight_prior = BetaPrior(eps=eps)
        self.alpha = self.weight_prior.check_parameter(alpha)
        self.eps = eps

    def forward(self, weight: torch.Tensor, alpha: float | torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            weight: ``(B, 1, *S)`` weight map in ``(0, 1]``.
            alpha: per-call override, a float or a ``(B,)`` tensor (one value per sample).
        """
        a = self.alpha if alpha is None else alpha
        return _reduce(self.weight_prior.negative_log_likelihood(weight, a), self.reduction)


class GaussianPriorLoss(_Loss):
    """Negative log Gaussian prior on the weight map: ``inv_sigma2 * mean((clamp(w, eps, max_weight) - mean)^2)``.

    Args:
        inv_sigma2: default ``1 / sigma^2 >= 0``; ``forward`` may override it with a float or a ``(B,)`` tensor.
        mean: prior mean of the weight.
        eps: lower clamp of the weight.
        max_weight: upper clamp of the weight.
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"`` for a ``(B,)`` tensor.
    """

    def __init__(
        self,
        inv_sigma2: float = 1.0,
        mean: float = 1.0,
        eps: float = 1e-6,
        max_weight: float = 5.0,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.weight_prior = GaussianPrior(eps=eps, max_weight=max_weight, mean=mean)
        self.inv_sigma2 = self.weight_prior.check_parameter(inv_sigma2)
        self.mean = float(mean)
        self.eps = eps
        self.max_weight = max_weight

    def forward(self, weight: torch.Tensor, inv_sigma2: float | torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            weight: ``(B, 1, *S)`` positive weight map.
            inv_sigma2: per-call override, a float or a ``(B,)`` tensor (one value per sample).
        """
        s = self.inv_sigma2 if inv_sigma2 is None else inv_sigma2
        return _reduce(self.weight_prior.negative_log_likelihood(weight, s), self.reduction)


class RegularizationLossOutput(NamedTuple):
    """Value of :class:`SpatiallyVaryingRegularizationLoss` and its parts (reduced alike), for logging.

    Attributes:
        total: ``diffusion + prior``, the term to add to the similarity loss.
        diffusion: ``lambda_max * mean_x[w |grad u|^2]``, the weighted smoothness term as it enters ``total``.
        prior: the negative log prior of the weight map.
    """

    total: torch.Tensor
    diffusion: torch.Tensor
    prior: torch.Tensor


class SpatiallyVaryingRegularizationLoss(_Loss):
    """Regularisation part of the spatially varying regularisation objective:
    ``lambda_max * mean_x[w(x) |grad u(x)|^2] - log p(w)``.

    ``lambda_max`` and the prior's parameter (``alpha`` for ``prior="beta"``, ``inv_sigma2`` for
    ``prior="gaussian"``, :attr:`~svreg_monai.priors.WeightPrior.parameter` in general) are defaults that ``forward``
    can override per call, as floats or ``(B,)`` tensors with one value per sample (hypernetwork training samples
    them per sample).

    Args:
        prior: a registered prior name (``"beta"``: Beta(alpha, 1), weights in (0, 1]; ``"gaussian"``; see
            :mod:`svreg_monai.priors`) or a :class:`~svreg_monai.priors.WeightPrior`.
        lambda_max: default global weight of the diffusion term, ``>= 0``.
        alpha: default Beta prior parameter, ``>= 1`` (used when ``prior="beta"``; None for the prior's default).
        inv_sigma2: default Gaussian prior precision, ``>= 0`` (used when ``prior="gaussian"``; None for default).
        gaussian_mean: the Gaussian prior's mean.
        max_weight: the Gaussian prior's upper clamp of the weight.
        eps: lower clamp of the weight in the prior.
        penalty: ``"l2"`` or ``"l1"`` diffusion penalty.
        reduction: ``"mean"``, ``"sum"`` over the batch, or ``"none"`` for ``(B,)`` tensors.
        prior_param: default prior parameter of any prior (overrides ``alpha``/``inv_sigma2``; None for those, else
            the prior's ``default_parameter``).

    Example::

        reg = SpatiallyVaryingRegularizationLoss(prior="beta", lambda_max=2.0, alpha=1.05)
        out = reg(ddf, weight)
        loss = similarity + out.total
        logs = {"diffusion": out.diffusion.item(), "prior": out.prior.item()}
    """

    def __init__(
        self,
        prior: str | WeightPrior = "beta",
        lambda_max: float = 1.0,
        alpha: float | None = None,
        inv_sigma2: float | None = None,
        gaussian_mean: float = 1.0,
        max_weight: float = 5.0,
        eps: float = 1e-6,
        penalty: str = "l2",
        reduction: LossReduction | str = LossReduction.MEAN,
        prior_param: float | None = None,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.weight_prior = get_prior(prior, eps=eps, max_weight=max_weight, mean=gaussian_mean)
        self.prior = self.weight_prior.name
        self.lambda_max = _check_min(lambda_max, "lambda_max", 0.0)
        self.diffusion = SpatiallyVaryingDiffusionLoss(penalty=penalty, reduction="none")
        if prior_param is None:
            prior_param = {"alpha": alpha, "inv_sigma2": inv_sigma2}.get(self.weight_prior.parameter)
        if prior_param is None:
            prior_param = self.weight_prior.default_parameter
        self.prior_param = self.weight_prior.check_parameter(prior_param)

    def forward(
        self,
        ddf: torch.Tensor,
        weight: torch.Tensor,
        lambda_max: float | torch.Tensor | None = None,
        prior_param: float | torch.Tensor | None = None,
    ) -> RegularizationLossOutput:
        """
        Args:
            ddf: ``(B, N, *S)`` displacement in voxels.
            weight: ``(B, 1, *S)`` voxel-wise regularisation weight.
            lambda_max: per-call override of ``lambda_max``, float or ``(B,)`` tensor.
            prior_param: per-call override of the prior's parameter (``alpha``, ``inv_sigma2``), float or ``(B,)``.

        Returns:
            :class:`RegularizationLossOutput` ``(total, diffusion, prior)``, each reduced by ``reduction``.
        """
        lam = check_per_sample_value(
            self.lambda_max if lambda_max is None else lambda_max, "lambda_max", ddf.shape[0], ddf, minimum=0.0
        )
        diffusion = lam * self.diffusion(ddf, weight)
        param = self.prior_param if prior_param is None else prior_param
        prior = self.weight_prior.negative_log_likelihood(weight, param)
        return RegularizationLossOutput(
            total=_reduce(diffusion + prior, self.reduction),
            diffusion=_reduce(diffusion, self.reduction),
            prior=_reduce(prior, self.reduction),
        )
