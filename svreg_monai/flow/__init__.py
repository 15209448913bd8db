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
"""Displacement and velocity fields: integration (scaling and squaring, time-varying steps), warping, composition
and resampling. Functional operations on fields, not network blocks (those are in
:mod:`svreg_monai.networks.blocks`); the name follows deepali's ``core.flow``."""

from __future__ import annotations

from .integration import TVF_RULES, VelocityFieldIntegrator, integrate_tvf, scaling_and_squaring, tvf_step
from .resize import resize_ddf
from .warping import RegistrationWarp, compose_ddf, warp_image, warp_labels

__all__ = [
    "TVF_RULES",
    "RegistrationWarp",
    "VelocityFieldIntegrator",
    "compose_ddf",
    "integrate_tvf",
    "resize_ddf",
    "scaling_and_squaring",
    "tvf_step",
    "warp_image",
    "warp_labels",
]
