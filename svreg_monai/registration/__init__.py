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
"""Optimisation-based registration of one pair (tensors in, transforms out; no files)."""

from __future__ import annotations

from .affine import AffineRegistrationResult, affine_register, center_of_mass, downsample_to_spacing
from .deformable import InstanceOptimizationResult, optimize_spr, summarize_history, weight_logits

__all__ = [
    "AffineRegistrationResult",
    "InstanceOptimizationResult",
    "affine_register",
    "center_of_mass",
    "downsample_to_spacing",
    "optimize_spr",
    "summarize_history",
    "weight_logits",
]
