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
from monai.networks.nets import LocalNet, UNet, VoxelMorphUNet
from network_testing import flat_gradient

from svreg_monai.networks.nets import RegistrationOutput, SpatiallyVaryingRegistrationNet


def unet_2d(**kwargs) -> SpatiallyVaryingRegistrationNet:
    backbone = UNet(2, 2, 8, channels=(8, 16, 16), strides=(2, 2), num_res_units=1)
    return SpatiallyVaryingRegistrationNet(backbone, spatial_dims=2, feature_channels=8, **kwargs)


def voxelmorph_3d(**kwargs) -> SpatiallyVaryingRegistrationNet:
    unet = VoxelMorphUNet(3, 2, 8, channels=(8, 8, 8, 8), final_conv_channels=(8, 6))
    return SpatiallyVaryingRegistrationNet.from_voxelmorph_unet(unet, **kwargs)


def localnet_2d(**kwargs) -> SpatiallyVaryingRegistrationNet:
    backbone = LocalNet(2, 2, 4, extract_levels=(0, 1, 2), out_channels=6)
    return SpatiallyVaryingRegistrationNet(backbone, spatial_dims=2, feature_channels=6, **kwargs)


CASES = [
    (unet_2d, {}, (2, 1, 16, 16), (16, 16)),
    (voxelmorph_3d, {"half_resolution": True}, (2, 1, 16, 16, 16), (8, 8, 8)),
    (localnet_2d, {"weight_norm": "instance", "feature_act": "relu"}, (2, 1, 16, 16), (16, 16)),
]


@pytest.mark.parametrize("make,kwargs,shape,velocity_size", CASES)
def test_shapes_and_weight_range(make, kwargs, shape, velocity_size):
    torch.manual_seed(0)
    net = make(**kwargs)
    moving, fixed = torch.rand(shape), torch.rand(shape)
    out = net(moving, fixed)
    n = len(shape) - 2
    assert isinstance(out, RegistrationOutput)
    assert out.ddf.shape == (2, n, *shape[2:])
    assert out.velocity.shape == (2, n, *velocity_size)
    assert out.weight.shape == (2, 1, *shape[2:])
    assert bool((out.weight > 0).all()) and bool((out.weight <= 1).all())


@pytest.mark.parametrize("make,kwargs,shape,velocity_size", CASES)
def test_identity_at_init_with_zero_velocity_head(make, kwargs, shape, velocity_size):
    torch.manual_seed(1)
    net = make(velocity_init="zero", **kwargs)
    out = net(torch.rand(shape), torch.rand(shape))
    assert torch.equal(out.ddf, torch.zeros_like(out.ddf))
    assert torch.equal(out.velocity, torch.zeros_like(out.velocity))


@pytest.mark.parametrize("make,kwargs,shape,velocity_size", CASES[:2])
def test_gradients_reach_all_parameters(make, kwargs, shape, velocity_size):
    torch.manual_seed(2)
    net = make(velocity_init_std=1e-2, **kwargs)
    out = net(torch.rand(shape), torch.rand(shape))
    loss = (out.ddf * torch.randn_like(out.ddf)).sum() + (out.weight * torch.randn_like(out.weight)).sum()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("make,kwargs,shape,velocity_size", CASES[:2])
def test_mixed_precision_outputs_float32_close_to_float32(make, kwargs, shape, velocity_size):
    torch.manual_seed(0)
    ref = make(velocity_init_std=0.05, **kwargs).eval()
    net = make(mixed_precision="bfloat16", **kwargs).eval()
    net.load_state_dict(ref.state_dict())
    moving, fixed = torch.rand(shape), torch.rand(shape)
    with torch.no_grad():
        expected, out = ref(moving, fixed), net(moving, fixed)
    for name in ("ddf", "velocity", "weight"):
        a, b = getattr(expected, name), getattr(out, name)
        assert b.dtype == torch.float32, name
        assert not torch.equal(a, b), name  # the backbone did run in bfloat16
        assert (a - b).abs().mean() <= 0.05 * a.abs().mean(), name
    with pytest.raises(ValueError, match="mixed_precision .* got 'fp8'"):
        make(mixed_precision="fp8")


def test_svf_is_diffeomorphic_integration():
    torch.manual_seed(3)
    net = unet_2d(velocity_init_std=1e-2, integration_steps=4)
    plain = unet_2d(velocity_init_std=1e-2, integration_steps=0)
    plain.load_state_dict(net.state_dict())
    moving, fixed = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    out, raw = net(moving, fixed), plain(moving, fixed)
    torch.testing.assert_close(raw.ddf, raw.velocity)
    torch.testing.assert_close(out.ddf, net.integrator(out.velocity))


def test_invalid_inputs():
    net = unet_2d()
    with pytest.raises(ValueError, match="same shape"):
        net(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 8))
    with pytest.raises(ValueError, match="4 dimensions"):
        net(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="backbone output must have shape"):
        SpatiallyVaryingRegistrationNet(UNet(2, 2, 4, (8, 8), (2,)), 2, 8)(
            torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
        )
    with pytest.raises(ValueError, match="even spatial sizes"):
        unet_2d(half_resolution=True)(torch.rand(1, 1, 15, 16), torch.rand(1, 1, 15, 16))
    with pytest.raises(ValueError, match="spatial_dims"):
        SpatiallyVaryingRegistrationNet(UNet(2, 2, 4, (8, 8), (2,)), 4, 4)
    with pytest.raises(ValueError, match="velocity_init"):
        unet_2d(velocity_init="random")
    with pytest.raises(ValueError, match="VoxelMorphUNet"):
        SpatiallyVaryingRegistrationNet.from_voxelmorph_unet(UNet(2, 2, 4, (8, 8), (2,)))


def test_bfloat16_gradients_of_a_unet_backbone_on_small_maps(one_thread):
    # a strided convolution brings the first axis to 2, where oneDNN's CPU bfloat16 weight gradients are garbage:
    # the network guards its convolutions (svreg_monai.utils.precision): finite gradients, close to float32
    def make(**kwargs):
        torch.manual_seed(0)
        backbone = UNet(3, 2, 8, channels=(16, 32, 32), strides=(2, 2), num_res_units=1)
        return SpatiallyVaryingRegistrationNet(backbone, 3, 8, velocity_init_std=0.05, **kwargs)

    ref, net = make(), make(mixed_precision="bfloat16")
    net.load_state_dict(ref.state_dict())
    moving, fixed = torch.rand(1, 1, 4, 16, 16), torch.rand(1, 1, 4, 16, 16)

    expected = flat_gradient(ref, moving, fixed)
    for _ in range(3):
        g = flat_gradient(net, moving, fixed)
        assert bool(torch.isfinite(g).all()) and (g - expected).norm() <= 0.1 * expected.norm()
