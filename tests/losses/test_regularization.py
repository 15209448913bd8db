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

import math

import pytest
import torch

from svreg_monai.losses import (
    BetaPriorLoss,
    GaussianPriorLoss,
    SpatiallyVaryingDiffusionLoss,
    SpatiallyVaryingRegularizationLoss,
    beta_prior,
    gaussian_prior,
    spatially_varying_diffusion,
)

SHAPES = [(2, 2, 7, 9), (2, 3, 5, 6, 7)]


def linear_field(shape: tuple[int, ...], matrix: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """u(x) = A x for every sample, x = voxel index; shape (B, N, *S)."""
    b, n, *spatial = shape
    grids = torch.meshgrid(*[torch.arange(s, dtype=dtype) for s in spatial], indexing="ij")
    x = torch.stack(grids)  # (N, *S)
    u = torch.einsum("ck,k...->c...", matrix.to(dtype), x)
    return u.unsqueeze(0).expand(b, *u.shape).clone()


def reference_form(ddf: torch.Tensor, weight: torch.Tensor, penalty: str) -> torch.Tensor:
    """The method's formula written out axis by axis (mean over all elements of each weighted term)."""
    n = ddf.ndim - 2
    total = 0.0
    for axis in range(2, 2 + n):
        length = ddf.shape[axis]
        d = ddf.narrow(axis, 1, length - 1) - ddf.narrow(axis, 0, length - 1)
        d = d**2 if penalty == "l2" else d.abs()
        total = total + torch.mean(d * weight.narrow(axis, 1, length - 1))
    return total / n


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("penalty", ["l2", "l1"])
def test_linear_ramp_has_known_penalty(shape, penalty):
    n = shape[1]
    matrix = torch.arange(1, n * n + 1, dtype=torch.float64).reshape(n, n) / 10 - 0.3
    ddf = linear_field(shape, matrix)
    value = SpatiallyVaryingDiffusionLoss(penalty=penalty)(ddf)
    # each forward difference along axis k of channel c equals A[c, k]
    expected = (matrix**2).sum() / n / n if penalty == "l2" else matrix.abs().sum() / n / n
    assert torch.allclose(value, expected, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("const", [0.0, 0.25, 3.0])
def test_constant_weight_scales_linearly(shape, const):
    ddf = torch.randn(shape, dtype=torch.float64)
    weight = torch.full((shape[0], 1, *shape[2:]), const, dtype=torch.float64)
    loss = SpatiallyVaryingDiffusionLoss()
    assert torch.allclose(loss(ddf, weight), const * loss(ddf), atol=1e-12)
    assert torch.allclose(loss(ddf, None), loss(ddf, torch.ones_like(weight)))


def test_weight_is_taken_at_the_forward_voxel():
    h, w = 6, 5
    ddf = torch.zeros(1, 2, h, w, dtype=torch.float64)
    ddf[:, 0] = torch.arange(h, dtype=torch.float64)[:, None]  # unit forward difference along axis 0 only
    first_row = torch.zeros(1, 1, h, w, dtype=torch.float64)
    first_row[..., 0, :] = 1.0
    last_row = torch.zeros_like(first_row)
    last_row[..., -1, :] = 1.0
    loss = SpatiallyVaryingDiffusionLoss()
    assert loss(ddf, first_row).item() == 0.0  # row 0 is never the forward voxel of a difference
    # axis-0 term: W unit differences out of 2 * (H - 1) * W elements; axis-1 term is 0; mean over 2 axes
    assert loss(ddf, last_row).item() == pytest.approx(0.5 / (2 * (h - 1)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("penalty", ["l2", "l1"])
def test_matches_reference_formula(shape, penalty):
    torch.manual_seed(0)
    ddf = torch.randn(shape, dtype=torch.float64)
    weight = torch.rand(shape[0], 1, *shape[2:], dtype=torch.float64)
    value = SpatiallyVaryingDiffusionLoss(penalty=penalty)(ddf, weight)
    assert torch.allclose(value, reference_form(ddf, weight, penalty), atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reduction(reduction):
    ddf = torch.randn(3, 2, 6, 7)
    weight = torch.rand(3, 1, 6, 7)
    per_sample = spatially_varying_diffusion(ddf, weight)
    value = SpatiallyVaryingDiffusionLoss(reduction=reduction)(ddf, weight)
    expected = {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]
    assert torch.allclose(value, expected)
    assert per_sample.shape == (3,)


def test_singleton_batch_weight_broadcasts():
    ddf = torch.randn(2, 2, 6, 7)
    weight = torch.rand(1, 1, 6, 7)
    assert torch.allclose(
        spatially_varying_diffusion(ddf, weight), spatially_varying_diffusion(ddf, weight.expand(2, 1, 6, 7))
    )


@pytest.mark.parametrize(
    "ddf_shape, weight_shape, match",
    [
        ((2, 3, 6, 7), None, "channels"),  # channels != spatial dims
        ((2, 2, 6), None, "dimensions"),  # 1D
        ((2, 2, 6, 7), (2, 2, 6, 7), "weight"),  # weight with 2 channels
        ((2, 2, 6, 7), (2, 1, 6, 8), "weight"),  # weight spatial size differs
        ((2, 2, 6, 7), (3, 1, 6, 7), "weight"),  # weight batch differs
        ((2, 2, 1, 7), None, ">= 2"),  # too small for a forward difference
    ],
)
def test_bad_shapes_raise(ddf_shape, weight_shape, match):
    ddf = torch.randn(ddf_shape)
    weight = None if weight_shape is None else torch.rand(weight_shape)
    with pytest.raises(ValueError, match=match):
        SpatiallyVaryingDiffusionLoss()(ddf, weight)


def test_non_finite_and_device_and_penalty_errors():
    ddf = torch.randn(1, 2, 5, 5)
    bad = ddf.clone()
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        SpatiallyVaryingDiffusionLoss()(bad)
    w = torch.ones(1, 1, 5, 5)
    w[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="Inf"):
        SpatiallyVaryingDiffusionLoss()(ddf, w)
    with pytest.raises(ValueError, match="same device"):
        SpatiallyVaryingDiffusionLoss()(ddf, torch.ones(1, 1, 5, 5, device="meta"))
    with pytest.raises(ValueError, match="penalty"):
        SpatiallyVaryingDiffusionLoss(penalty="l3")
    with pytest.raises(ValueError, match="integer|dtype"):
        SpatiallyVaryingDiffusionLoss()(torch.zeros(1, 2, 5, 5, dtype=torch.long))


@pytest.mark.parametrize("const", [1e-8, 0.3, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [1.0, 1.05, 1.2])
def test_beta_prior_constant_weight(const, alpha):
    weight = torch.full((2, 1, 4, 5, 6), const, dtype=torch.float64)
    eps = 1e-6
    expected = (1 - alpha) * math.log(min(max(const, eps), 1.0))
    assert BetaPriorLoss(alpha, eps=eps)(weight).item() == pytest.approx(expected, abs=1e-12)


def test_beta_prior_per_sample_alpha():
    weight = torch.rand(3, 1, 4, 5) * 0.9 + 0.05
    alpha = torch.tensor([1.0, 1.1, 1.2])
    per_sample = BetaPriorLoss(reduction="none")(weight, alpha)
    for i in range(3):
        single = BetaPriorLoss(float(alpha[i]))(weight[i : i + 1])
        assert torch.allclose(per_sample[i], single)
    assert torch.allclose(BetaPriorLoss()(weight, alpha), per_sample.mean())


@pytest.mark.parametrize(
    "alpha, match",
    [(0.99, ">= 1"), (torch.tensor([1.1, 0.5]), ">= 1"), (torch.tensor([1.1, 1.2, 1.3]), "shape"), ("1.1", "float")],
)
def test_beta_prior_bad_alpha(alpha, match):
    with pytest.raises(ValueError, match=match):
        BetaPriorLoss()(torch.rand(2, 1, 4, 4), alpha)


def test_beta_prior_rejects_bad_construction_and_weight():
    with pytest.raises(ValueError, match="alpha"):
        BetaPriorLoss(0.5)
    with pytest.raises(ValueError, match=r"\(B, 1, \*S\)"):
        BetaPriorLoss()(torch.rand(2, 2, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        BetaPriorLoss()(torch.full((1, 1, 4, 4), float("nan")))


@pytest.mark.parametrize("const, expected_sq", [(1.0, 0.0), (0.5, 0.25), (3.0, 4.0), (10.0, 16.0), (-1.0, 1.0)])
def test_gaussian_prior_constant_weight(const, expected_sq):
    weight = torch.full((2, 1, 4, 5), const, dtype=torch.float64)
    value = GaussianPriorLoss(inv_sigma2=2.0, max_weight=5.0)(weight)
    assert value.item() == pytest.approx(2.0 * expected_sq, abs=1e-5)


def test_gaussian_prior_per_sample_and_errors():
    weight = torch.rand(2, 1, 4, 5) * 3
    inv = torch.tensor([0.0, 4.0])
    per_sample = gaussian_prior(weight, inv)
    assert per_sample[0].item() == 0.0
    assert torch.allclose(per_sample[1], gaussian_prior(weight[1:], 4.0)[0])
    with pytest.raises(ValueError, match="inv_sigma2"):
        GaussianPriorLoss(inv_sigma2=-1.0)
    with pytest.raises(ValueError, match="inv_sigma2"):
        GaussianPriorLoss()(weight, torch.tensor([1.0, -0.1]))


@pytest.mark.parametrize("prior, param", [("beta", 1.1), ("gaussian", 3.0)])
def test_composite_total_is_sum_of_parts(prior, param):
    torch.manual_seed(1)
    ddf = torch.randn(2, 3, 5, 6, 7)
    weight = torch.rand(2, 1, 5, 6, 7) * 0.9 + 0.05
    lam = torch.tensor([0.5, 4.0])
    out = SpatiallyVaryingRegularizationLoss(prior=prior)(ddf, weight, lambda_max=lam, prior_param=param)
    assert torch.allclose(out.total, out.diffusion + out.prior)
    diff = spatially_varying_diffusion(ddf, weight)
    assert torch.allclose(out.diffusion, (lam * diff).mean())
    prior_fn = beta_prior if prior == "beta" else gaussian_prior
    assert torch.allclose(out.prior, prior_fn(weight, param).mean())
    none = SpatiallyVaryingRegularizationLoss(prior=prior, reduction="none")(ddf, weight, lam, param)
    assert none.total.shape == (2,)
    assert torch.allclose(none.total.mean(), out.total)


def test_composite_defaults_and_errors():
    ddf = torch.randn(1, 2, 5, 6)
    weight = torch.rand(1, 1, 5, 6)
    reg = SpatiallyVaryingRegularizationLoss(prior="beta", lambda_max=2.0, alpha=1.2)
    out = reg(ddf, weight)
    expected = 2.0 * spatially_varying_diffusion(ddf, weight) + beta_prior(weight, 1.2)
    assert torch.allclose(out.total, expected.mean())
    with pytest.raises(ValueError, match="prior"):
        SpatiallyVaryingRegularizationLoss(prior="laplace")
    with pytest.raises(ValueError, match="lambda_max"):
        SpatiallyVaryingRegularizationLoss(lambda_max=-1.0)
    with pytest.raises(ValueError, match="lambda_max"):
        reg(ddf, weight, lambda_max=torch.tensor([-1.0]))


def test_gradcheck_losses():
    torch.manual_seed(2)
    ddf = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    weight = (torch.rand(2, 1, 4, 5, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    alpha = torch.tensor([1.05, 1.2], dtype=torch.float64, requires_grad=True)
    lam = torch.tensor([0.7, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, w: SpatiallyVaryingDiffusionLoss()(u, w), (ddf, weight))
    assert torch.autograd.gradcheck(lambda u, w: SpatiallyVaryingDiffusionLoss("l1")(u + 0.01, w), (ddf, weight))
    assert torch.autograd.gradcheck(lambda w, a: BetaPriorLoss()(w, a), (weight, alpha))
    assert torch.autograd.gradcheck(lambda w: GaussianPriorLoss(2.0)(w * 3), (weight,))
    reg = SpatiallyVaryingRegularizationLoss()
    assert torch.autograd.gradcheck(lambda u, w, lm, a: reg(u, w, lm, a).total, (ddf, weight, lam, alpha))
    ddf3 = torch.randn(1, 3, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    w3 = (torch.rand(1, 1, 3, 4, 3, dtype=torch.float64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u, w: reg(u, w).total, (ddf3, w3))


def test_float32_and_float64_agree():
    ddf = torch.randn(2, 3, 6, 5, 4, dtype=torch.float64)
    weight = torch.rand(2, 1, 6, 5, 4, dtype=torch.float64)
    reg = SpatiallyVaryingRegularizationLoss()
    v64 = reg(ddf, weight).total
    v32 = reg(ddf.float(), weight.float()).total
    assert v32.dtype == torch.float32
    assert torch.allclose(v32.double(), v64, rtol=1e-5)
