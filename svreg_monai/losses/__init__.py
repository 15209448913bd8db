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
"""Losses: spatially varying regularisation, weight priors and fast local normalised cross-correlation."""

from __future__ import annotations

from .functional import beta_prior, gaussian_prior, spatially_varying_diffusion
from .functional_similarity import (
    local_normalized_cross_correlation_loss,
    separable_window_filter,
    squared_local_correlation_loss,
)
from .image_similarity import LocalNormalizedCrossCorrelationLoss, SquaredLocalCorrelationLoss
from .registration import RegistrationLoss
from .regularization import (
    BetaPriorLoss,
    GaussianPriorLoss,
    RegularizationLossOutput,
    SpatiallyVaryingDiffusionLoss,
    SpatiallyVaryingRegularizationLoss,
)

__all__ = [
    "BetaPriorLoss",
    "GaussianPriorLoss",
    "LocalNormalizedCrossCorrelationLoss",
    "RegistrationLoss",
    "RegularizationLossOutput",
    "SpatiallyVaryingDiffusionLoss",
    "SpatiallyVaryingRegularizationLoss",
    "SquaredLocalCorrelationLoss",
    "beta_prior",
    "gaussian_prior",
    "local_normalized_cross_correlation_loss",
    "separable_window_filter",
    "spatially_varying_diffusion",
    "squared_local_correlation_loss",
]
