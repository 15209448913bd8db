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
"""Visualisation of registration results: deformed grids, log-Jacobian maps, PNG figures and TensorBoard panels,
and figures over the regularisation hyperparameters (landscapes, λ maps across settings)."""

from __future__ import annotations

from .fields import deformed_grid, grid_image, log_jacobian_map
from .figures import PANEL_NAMES, central_slices, registration_figure, tensorboard_slices
from .hyper import hyperparameter_grid_figure, landscape_figure

__all__ = [
    "PANEL_NAMES",
    "central_slices",
    "deformed_grid",
    "grid_image",
    "hyperparameter_grid_figure",
    "landscape_figure",
    "log_jacobian_map",
    "registration_figure",
    "tensorboard_slices",
]
