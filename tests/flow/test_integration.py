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
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF

from svreg_monai.flow import (
    VelocityFieldIntegrator,
    compose_ddf,
    integrate_tvf,
    scaling_and_squaring,
    tvf_step,
    warp_image,
)


def smooth_field(shape: tuple[int, ...], magnitude: float, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """A smooth random field: coarse noise upsampled to ``shape`` (B, N, *S)."""
    g = torch.Generator().manual_seed(seed)
    b, n, *spatial = shape
    coarse = torch.randn(b, n, *[max(3, s // 8) for s in spatial], generator=g, dtype=torch.float64)
    mode = "bilinear" if n == 2 else "trilinear"
    field = F.interpolate(coarse, size=tuple(spatial), mode=mode, align_corners=True)
    return (field / field.abs().max() * magnitude).to(dtype)


def interior(x: torch.Tensor, margin: int) -> torch.Tensor:
    sl = (slice(None), slice(None)) + (slice(margin, -margin),) * (x.ndim - 2)
    return x[sl]


@pytest.mark.parametrize("shape", [(2, 2, 12, 14), (1, 3, 10, 11, 12)])
@pytest.mark.parametrize("num_steps", [1, 4, 7])
def test_svf_equals_monai_dvf2ddf(shape, num_steps):
    v = smooth_field(shape, 3.0)
    ours = VelocityFieldIntegrator("svf", num_steps=num_steps)(v)
    assert torch.allclose(ours, DVF2DDF(num_steps=num_steps)(v), atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 2, 12, 14), (1, 3, 10, 11, 12)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_velocity_gives_translation(shape, dtype):
    shift = torch.tensor([0.4, -0.3, 0.2][: shape[1]], dtype=dtype)
    v = shift.view(1, -1, *([1] * (len(shape) - 2))).expand(shape).clone()
    # zero padding: the border effect reaches a few voxels inwards over the squaring steps
    ddf = scaling_and_squaring(v, 7)
    assert ddf.dtype == dtype
    assert torch.allclose(interior(ddf, 3), interior(v, 3), atol=1e-5)
    # border padding: exact everywhere
    ddf_border = VelocityFieldIntegrator("svf", padding_mode="border")(v)
    assert torch.allclose(ddf_border, v, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 2, 32, 32), (1, 3, 20, 20, 20)])
def test_svf_composed_with_inverse_is_identity(shape):
    v = smooth_field(shape, 2.0, seed=3, dtype=torch.float64)
    integ = VelocityFieldIntegrator("svf", num_steps=7)
    fwd, inv = integ(v), integ.inverse(v)
    assert fwd.abs().max() > 1.0  # a real deformation
    for residual in (interior(compose_ddf(fwd, inv), 4), interior(compose_ddf(inv, fwd), 4)):
        # residual of linear interpolation only: ~1/40 of the displacement at most, ~1/500 on average
        assert residual.abs().max() < 0.1
        assert residual.abs().mean() < 0.01


def test_compose_ddf_matches_sequential_warping():
    shape = (1, 2, 40, 40)
    a = smooth_field(shape, 2.0, seed=1, dtype=torch.float64)
    b = smooth_field(shape, 2.0, seed=2, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.linspace(-3, 3, 40), torch.linspace(-3, 3, 40), indexing="ij")
    image = torch.sin(yy + 0.5 * xx)[None, None].double()  # smooth so interpolation error is small
    two_step = warp_image(warp_image(image, a), b)
    one_step = warp_image(image, compose_ddf(a, b))
    error = (interior(two_step, 5) - interior(one_step, 5)).abs().max()
    naive = (interior(two_step, 5) - interior(warp_image(image, a + b), 5)).abs().max()
    assert error < 0.01  # interpolation error only
    assert naive > 3 * error  # adding displacements is not composing them


@pytest.mark.parametrize("rule", ["reference", "composition"])
def test_tvf_of_constant_steps_sums_translations(rule):
    shape = (2, 3, 10, 11, 12)
    shifts = [0.3, -0.2, 0.5]
    steps = [torch.full(shape, s) for s in shifts]
    ddf = integrate_tvf(steps, rule=rule, num_steps=0)
    assert torch.allclose(interior(ddf, 2), torch.full_like(interior(ddf, 2), sum(shifts)), atol=1e-5)


def test_tvf_rules():
    shape = (1, 2, 16, 16)
    v1 = smooth_field(shape, 1.5, seed=4)
    v2 = smooth_field(shape, 1.5, seed=5)
    ref = integrate_tvf([v1, v2], rule="reference", num_steps=0)
    expected_ref = warp_image(v1, v1) + warp_image(v2, v2)
    assert torch.allclose(ref, expected_ref, atol=1e-6)
    comp = integrate_tvf([v1, v2], rule="composition", num_steps=0)
    assert torch.allclose(comp, compose_ddf(v1, v2), atol=1e-6)
    assert torch.allclose(tvf_step(None, v1, "composition"), v1)
    # with scaling and squaring of the accumulated field, as TransMorph-TVF with SVF=True
    integ = VelocityFieldIntegrator("tvf", num_steps=7)
    assert torch.allclose(integ([v1, v2]), scaling_and_squaring(expected_ref, 7), atol=1e-6)
    assert torch.allclose(integ.step(integ.step(None, v1), v2), expected_ref, atol=1e-6)


def test_gradcheck_integration():
    torch.manual_seed(0)
    v = (0.3 * torch.randn(1, 2, 5, 6, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: scaling_and_squaring(x, 2), (v,))
    w = (0.3 * torch.randn(1, 2, 5, 6, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: integrate_tvf([a, b], "composition", 1), (v, w))
    v3 = (0.3 * torch.randn(1, 3, 4, 5, 4, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: scaling_and_squaring(x, 2), (v3,))


def test_integrator_errors():
    with pytest.raises(ValueError, match="mode"):
        VelocityFieldIntegrator("lddmm")
    with pytest.raises(ValueError, match="num_steps"):
        VelocityFieldIntegrator("svf", num_steps=0)
    with pytest.raises(ValueError, match="tvf_rule"):
        VelocityFieldIntegrator("tvf", tvf_rule="euler")
    with pytest.raises(ValueError, match="padding_mode"):
        VelocityFieldIntegrator(padding_mode="circular")
    with pytest.raises(ValueError, match="inverse"):
        VelocityFieldIntegrator("tvf").inverse(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="one"):
        VelocityFieldIntegrator("svf")([torch.zeros(1, 2, 4, 4)])
    with pytest.raises(ValueError, match="non-empty"):
        VelocityFieldIntegrator("tvf")([])
    with pytest.raises(ValueError, match=r"velocities\[1\]"):
        integrate_tvf([torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5)])
    with pytest.raises(ValueError, match="channels"):
        scaling_and_squaring(torch.zeros(1, 3, 4, 4))
    nan = torch.zeros(1, 2, 4, 4)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        scaling_and_squaring(nan)


def test_warp_grid_follows_dtype():
    integ = VelocityFieldIntegrator("svf", num_steps=3)
    v = smooth_field((1, 2, 8, 8), 1.0)
    out32 = integ(v)
    out64 = integ(v.double())
    assert out64.dtype == torch.float64
    assert integ.warp.ref_grid.dtype == torch.float64
    assert torch.allclose(out32.double(), out64, atol=1e-5)


@pytest.mark.parametrize("rule", ["reference", "composition"])
def test_integration_runs_in_float32_under_mixed_precision(rule):
    # a 16-bit velocity (a network's head under autocast) is integrated in float32, and the caller's autocast does not
    # reach the warps: the result equals the float32 integration of the same (rounded) values exactly
    v = smooth_field((1, 3, 10, 11, 12), 2.0).bfloat16()
    integ = VelocityFieldIntegrator("tvf", num_steps=4, tvf_rule=rule)
    expected = integ([v.float(), v.float()])
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = integ([v, v])
            step = tvf_step(None, v, rule=rule)
            svf = scaling_and_squaring(v, 3)
        assert out.dtype == step.dtype == svf.dtype == torch.float32
        assert torch.equal(out, expected)
        assert torch.equal(svf, scaling_and_squaring(v.float(), 3))


def test_warp_samples_in_float32_under_autocast():
    image = smooth_field((1, 1, 9, 10, 11), 1.0, seed=1)
    ddf = smooth_field((1, 3, 9, 10, 11), 1.5)
    expected = warp_image(image, ddf)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = warp_image(image, ddf)
    half = warp_image(image.bfloat16(), ddf.bfloat16())
    assert out.dtype == half.dtype == torch.float32
    assert torch.equal(out, expected)
    assert torch.equal(half, warp_image(image.bfloat16().float(), ddf.bfloat16().float()))
