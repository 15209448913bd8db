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
"""Regularity metrics of displacement fields: Jacobian determinant, NDP, NDV (digital diffeomorphism), SDlogJ."""

from __future__ import annotations

from .functional import (
    NonDiffeomorphicMeasures,
    compute_jacobian_metrics,
    jacobian_determinant,
    negative_jacobian_percent,
    non_diffeomorphic_measures,
    non_diffeomorphic_volume,
    sd_log_jacobian,
)
from .jacobian import JacobianMetric
from .labels import dice_per_structure, labels_to_onehot

__all__ = [
    "JacobianMetric",
    "NonDiffeomorphicMeasures",
    "compute_jacobian_metrics",
    "jacobian_determinant",
    "dice_per_structure",
    "labels_to_onehot",
    "negative_jacobian_percent",
    "non_diffeomorphic_measures",
    "non_diffeomorphic_volume",
    "sd_log_jacobian",
]
