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
from __future__ import annotations

import pytest
import torch

from svreg_monai.losses import (
    RegistrationLoss,
    SpatiallyVaryingRegularizationLoss,
    SquaredLocalCorrelationLoss,
)
from svreg_monai.networks.nets.outputs import RegistrationOutput


def _loss(**kwargs):
    return RegistrationLoss(
        SquaredLocalCorrelationLoss(spatial_dims=3, kernel_size=3),
        SpatiallyVaryingRegularizationLoss(lambda_max=2.0, alpha=1.1),
        **kwargs,
    )


def test_identity_ddf_terms():
    image = torch.rand(2, 1, 8, 8, 8)
    pred = RegistrationOutput(torch.zeros(2, 3, 8, 8, 8), torch.zeros(2, 3, 4, 4, 4), torch.full((2, 1, 8, 8, 8), 0.5))
    loss = _loss()
    value = loss(pred, {"moving": image, "fixed": image})
    sim = SquaredLocalCorrelationLoss(spatial_dims=3, kernel_size=3)(image, image)
    prior = -(1.1 - 1) * torch.log(torch.tensor(0.5))  # -(alpha-1) mean log(lambda)
    torch.testing.assert_close(value, sim + prior)
    torch.testing.assert_close(loss.last_terms["diffusion"], torch.tensor(0.0))
    torch.testing.assert_close(loss.last_terms["prior"], prior)


def test_per_sample_overrides_and_gradients():
    ddf = (0.3 * torch.randn(2, 3, 8, 8, 8)).requires_grad_()
    weight = torch.full((2, 1, 8, 8, 8), 0.5, requires_grad=True)
    targets = {"moving": torch.rand(2, 1, 8, 8, 8), "fixed": torch.rand(2, 1, 8, 8, 8)}
    loss = _loss()
    base = loss(RegistrationOutput(ddf, ddf, weight), targets)
    zero_reg = loss(
        RegistrationOutput(ddf, ddf, weight),
        {**targets, "lambda_max": torch.zeros(2), "prior_param": torch.ones(2)},
    )
    torch.testing.assert_close(zero_reg, loss.last_terms["similarity"])
    assert base > zero_reg
    base.backward()
    assert ddf.grad.abs().sum() > 0 and weight.grad.abs().sum() > 0


def test_errors():
    loss = _loss()
    with pytest.raises(ValueError, match="RegistrationOutput"):
        loss(torch.zeros(1, 3, 4, 4, 4), {"moving": torch.rand(1, 1, 4, 4, 4), "fixed": torch.rand(1, 1, 4, 4, 4)})
    pred = RegistrationOutput(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 2, 2, 2), torch.ones(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="'fixed'"):
        loss(pred, {"moving": torch.rand(1, 1, 4, 4, 4)})
    with pytest.raises(ValueError, match="similarity_weight"):
        _loss(similarity_weight=-1.0)
