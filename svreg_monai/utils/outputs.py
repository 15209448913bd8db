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
"""The typed output of the spatially varying registration networks."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["RegistrationOutput"]


class RegistrationOutput(NamedTuple):
    """Output of a spatially varying registration network.

    Attributes:
        ddf: ``(B, N, *S)`` displacement (moving -> fixed, pull-back) in voxels of the full-resolution input.
        velocity: ``(B, N, *S')`` velocity field that was integrated, in voxels of the grid it lives on
            (half resolution for TM-SPR).
        weight: ``(B, 1, *S)`` voxel-wise regularisation weight lambda(x) at full resolution.
    """

    ddf: torch.Tensor
    velocity: torch.Tensor
    weight: torch.Tensor
