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
"""Helpers shared by the network tests."""

from __future__ import annotations

import torch

__all__ = ["flat_gradient"]


def flat_gradient(model: torch.nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """All parameter gradients of ``mean(ddf^2) + mean(weight)`` for ``model(*inputs)``, as one flat vector."""
    model.zero_grad()
    out = model(*inputs)
    (out.ddf.square().mean() + out.weight.mean()).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
