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
"""Hyper layers: hyperparameter-conditioned convolutions and linear layers, and :func:`hyperize`."""

from __future__ import annotations

from .hyper_layers import (
    GENERATORS,
    HyperConv,
    HyperConvTranspose,
    HyperLinear,
    ParameterGenerator,
    current_hyper_embedding,
    hyper_embedding_context,
)
from .hyperize import HYPERIZABLE_TYPES, HyperConditionedNetwork, hyperize
from .hypernetwork import HyperNetwork

__all__ = [
    "GENERATORS",
    "HYPERIZABLE_TYPES",
    "HyperConditionedNetwork",
    "HyperConv",
    "HyperConvTranspose",
    "HyperLinear",
    "HyperNetwork",
    "ParameterGenerator",
    "current_hyper_embedding",
    "hyper_embedding_context",
    "hyperize",
]
