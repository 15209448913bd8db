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
"""``inverse_ddf``: the inverse displacement from the negated velocity, for the SPR networks."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.nets import UNet
from test_hyper_transmorph_spr import TINY

from svreg_monai.flow.resize import resize_ddf
from svreg_monai.flow.warping import warp_image
from svreg_monai.networks.nets import HyperTransMorphTVFSPR, SpatiallyVaryingRegistrationNet, TransMorphTVFSPR


def smooth_velocity(shape, amplitude: float) -> torch.Tensor:
    """A smooth ``(1, N, *shape)`` field (one sine period over the grid per channel)."""
    axes = torch.meshgrid(*[torch.linspace(0, math.pi, s) for s in shape], indexing="ij")
    n = len(shape)
    return (
        amplitude * torch.stack([torch.sin(axes[(i + 1) % n]) * torch.sin(axes[(i + 2) % n]) for i in range(n)])[None]
    )


def composition_error(forward: torch.Tensor, inverse: torch.Tensor) -> float:
    """Largest ``|u(x) + w(x + u(x))|`` away from the border, in voxels (0 for an exact inverse)."""
    comp = forward + warp_image(inverse, forward)
    m = 4
    return float(comp[(slice(None), slice(None), *[slice(m, -m)] * (forward.ndim - 2))].abs().max())


def test_transmorph_inverse_composes_to_identity():
    net = TransMorphTVFSPR(**TINY).eval()
    v = smooth_velocity((16, 16, 16), 1.2)  # the half-resolution accumulated field
    forward = resize_ddf(net.integrator.exponentiate(v), size=(32, 32, 32))  # what forward() makes of v
    inverse = net.inverse_ddf(v, (32, 32, 32))
    assert float(forward.abs().max()) > 2.0
    assert composition_error(forward, inverse) < 0.1
    # the network's own output: ddf and inverse_ddf from the same velocity
    with torch.no_grad():
        out = net(torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32))
        inv = net.inverse_ddf(out.velocity, (32, 32, 32))
    assert inv.shape == out.ddf.shape
    torch.testing.assert_close(inv, resize_ddf(net.integrator.exponentiate(-out.velocity), size=(32, 32, 32)))


def test_hyper_network_inverse_is_its_base_networks():
    net = HyperTransMorphTVFSPR(**TINY, hidden=16, hyper_layers=3).eval()
    v = smooth_velocity((16, 16, 16), 1.0)
    torch.testing.assert_close(net.inverse_ddf(v, (32, 32, 32)), net.network.inverse_ddf(v, (32, 32, 32)))


@pytest.mark.parametrize("half_resolution", [False, True])
def test_spr_net_inverse_composes_to_identity(half_resolution):
    backbone = UNet(2, 2, 8, channels=(8, 16, 16), strides=(2, 2), num_res_units=1)
    net = SpatiallyVaryingRegistrationNet(backbone, spatial_dims=2, feature_channels=8, half_resolution=half_resolution)
    shape = (16, 16) if half_resolution else (32, 32)
    v = smooth_velocity(shape, 1.5)
    forward = net.integrator(v)
    if half_resolution:
        forward = resize_ddf(forward, size=(32, 32))
    assert composition_error(forward, net.inverse_ddf(v, (32, 32))) < 0.1


def test_inverse_needs_integration():
    net = TransMorphTVFSPR(**TINY, integration_steps=0)
    with pytest.raises(ValueError, match="integration_steps > 0"):
        net.inverse_ddf(torch.zeros(1, 3, 16, 16, 16), (32, 32, 32))
    backbone = UNet(2, 2, 8, channels=(8, 16), strides=(2,), num_res_units=0)
    spr = SpatiallyVaryingRegistrationNet(backbone, spatial_dims=2, feature_channels=8, integration_steps=0)
    with pytest.raises(ValueError, match="integration_steps > 0"):
        spr.inverse_ddf(torch.zeros(1, 2, 8, 8), (8, 8))
