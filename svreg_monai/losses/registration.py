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
"""The complete training objective: image similarity of the warped moving image plus the learned regulariser."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from monai.utils import convert_to_tensor

from svreg_monai.flow.warping import RegistrationWarp
from svreg_monai.losses.regularization import SpatiallyVaryingRegularizationLoss
from svreg_monai.utils.keys import RegistrationKeys
from svreg_monai.utils.outputs import RegistrationOutput

__all__ = ["RegistrationLoss"]


class RegistrationLoss(nn.Module):
    """``similarity_weight * similarity(moving ∘ φ, fixed) + regularisation(ddf, λ)``, for MONAI trainers.

    The signature ``forward(pred, targets)`` is what ``monai.engines.SupervisedTrainer`` calls with the network
    output and the ``targets`` of :class:`~svreg_monai.engines.RegistrationPrepareBatch`. The moving image is
    warped here (pull-back through ``pred.ddf``). Per-sample ``lambda_max`` / ``prior_param`` entries of
    ``targets`` (hyper-conditioned training) override the regulariser's constants.

    The last evaluated terms are kept, detached, in :attr:`last_terms` (``similarity``, ``diffusion``, ``prior``,
    each a scalar tensor) for logging, e.g. by :class:`~svreg_monai.handlers.LossTermsHandler`.

    Args:
        similarity: image loss ``(warped, fixed) -> scalar``, e.g.
            :class:`~svreg_monai.losses.LocalNormalizedCrossCorrelationLoss`.
        regularization: the spatially varying regulariser.
        similarity_weight: weight of the image term.
        interp_mode: interpolation used to warp the moving image.
        padding_mode: padding used to warp the moving image.
    """

    def __init__(
        self,
        similarity: nn.Module,
        regularization: SpatiallyVaryingRegularizationLoss,
        similarity_weight: float = 1.0,
        interp_mode: str = "bilinear",
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if not similarity_weight >= 0:
            raise ValueError(f"similarity_weight must be non-negative, got {similarity_weight}.")
        self.similarity = similarity
        self.regularization = regularization
        self.similarity_weight = float(similarity_weight)
        self.warp = RegistrationWarp(mode=interp_mode, padding_mode=padding_mode)
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, pred: RegistrationOutput, targets: Mapping[str, Any]) -> torch.Tensor:
        """Compute the loss.

        Args:
            pred: network output with ``ddf`` ``(B, N, *S)`` (voxels) and ``weight`` ``(B, 1, *S)``.
            targets: dict with ``moving`` and ``fixed`` ``(B, C, *S)``; optional ``lambda_max`` and ``prior_param``
                ``(B,)``.

        Returns:
            the scalar (or per-sample, following the sub-losses' ``reduction``) objective.
        """
        if not isinstance(pred, RegistrationOutput):
            raise ValueError(
                f"pred must be a RegistrationOutput (ddf, velocity, weight), got {type(pred).__name__}; use a "
                "spatially varying registration network."
            )
        for key in (RegistrationKeys.MOVING, RegistrationKeys.FIXED):
            if key not in targets:
                raise ValueError(f"targets must hold {key!r}; keys received: {sorted(targets)}.")
        moving = targets[RegistrationKeys.MOVING]
        fixed = targets[RegistrationKeys.FIXED]
        moving, fixed = convert_to_tensor(moving, track_meta=False), convert_to_tensor(fixed, track_meta=False)
        warped = self.warp(moving, pred.ddf)
        similarity = self.similarity(warped, fixed)
        reg = self.regularization(
            pred.ddf, pred.weight, lambda_max=targets.get("lambda_max"), prior_param=targets.get("prior_param")
        )
        self.last_terms = {
            "similarity": similarity.detach(),
            "diffusion": reg.diffusion.detach(),
            "prior": reg.prior.detach(),
        }
        return self.similarity_weight * similarity + reg.total
