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
"""The regularisation-weight (lambda) head shared by every spatially varying registration network."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution

from svreg_monai.priors import WeightPrior, get_prior
from svreg_monai.utils.precision import to_float32
from svreg_monai.utils.validation import check_spatial_dims

__all__ = ["regularization_weight_activation", "RegularizationWeightHead"]


def regularization_weight_activation(
    logits: torch.Tensor, prior: str | WeightPrior = "beta", eps: float = 1e-6, max_weight: float = 5.0
) -> torch.Tensor:
    """Map head logits to a positive voxel-wise regularisation weight: the prior's
    :meth:`~svreg_monai.priors.WeightPrior.activation`.

    Args:
        logits: ``(B, 1, *S)`` raw head output.
        prior: a prior name or object; ``"beta"``: ``clamp(sigmoid(x), eps, 1)``, the support of the Beta(alpha, 1)
            prior (reference); ``"gaussian"``: ``clamp(softplus(x), eps, max_weight)``.
        eps: lower bound of the weight (for a prior given by name).
        max_weight: upper bound for a prior with unbounded support (for a prior given by name).

    Returns:
        ``(B, 1, *S)`` weight in ``[eps, 1]`` (beta) or ``[eps, max_weight]`` (gaussian).
    """
    return get_prior(prior, eps=eps, max_weight=max_weight).activation(logits)


class RegularizationWeightHead(nn.Module):
    """Two conv blocks, a 3x3(x3) convolution to one channel, optional upsampling, and the weight activation.

    This is the lambda head of TM-SPR (conv-norm-LeakyReLU twice, conv, x2 trilinear upsampling, sigmoid,
    clamp to ``[1e-6, 1]``), usable on the decoder features of any backbone.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the decoder features.
        hidden_channels: channels of the two conv blocks.
        prior: a prior name (``"beta"``, ``"gaussian"``, any registered one) or a
            :class:`~svreg_monai.priors.WeightPrior`, whose activation maps the logits to the weight.
        norm: normalisation of the conv blocks (MONAI name, e.g. ``"batch"`` as in the reference, ``"instance"``).
        upsample_factor: trilinear (bilinear) upsampling factor applied to the logits (1 = none; TM-SPR uses 2).
        eps: lower bound of the weight.
        max_weight: upper bound for the Gaussian-prior head.

    Shapes:
        ``(B, in_channels, *S) -> (B, 1, *(S * upsample_factor))``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        hidden_channels: int,
        prior: str | WeightPrior = "beta",
        norm: str | tuple | None = "batch",
        upsample_factor: int = 1,
        eps: float = 1e-6,
        max_weight: float = 5.0,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if upsample_factor < 1:
            raise ValueError(f"upsample_factor must be >= 1, got {upsample_factor}.")
        self.weight_prior = get_prior(prior, eps=eps, max_weight=max_weight)
        self.prior = self.weight_prior.name
        self.eps = self.weight_prior.eps
        self.max_weight = self.weight_prior.max_weight
        self.upsample_factor = upsample_factor
        act = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
        self.conv0 = Convolution(spatial_dims, in_channels, hidden_channels, act=act, norm=norm, bias=False)
        self.conv1 = Convolution(spatial_dims, hidden_channels, hidden_channels, act=act, norm=norm, bias=False)
        self.out = Convolution(spatial_dims, hidden_channels, 1, conv_only=True, bias=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: ``(B, in_channels, *S)``.

        Returns:
            ``(B, 1, *(S * upsample_factor))`` weight, float32 if the convolutions ran in 16 bits (the upsampling
            and the activation run in float32: the ``eps`` floor of ``1e-6`` and ``log(weight)`` in the prior need it).
        """
        logits = self.out(self.conv1(self.conv0(features)))
        logits = to_float32(logits)
        if self.upsample_factor > 1:
            mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
            logits = F.interpolate(logits, scale_factor=self.upsample_factor, mode=mode, align_corners=False)
        return self.weight_prior.activation(logits)
