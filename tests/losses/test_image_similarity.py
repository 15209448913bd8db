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
"""Tests for the fast LNCC (against MONAI's) and the voxelmorph-style squared local correlation (against dense conv)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from monai.losses import LocalNormalizedCrossCorrelationLoss as MonaiLNCC
from monai.networks.layers import separable_filtering

from svreg_monai.losses.functional_similarity import (
    local_normalized_cross_correlation_loss,
    make_window_kernel,
    separable_window_filter,
    squared_local_correlation_loss,
)
from svreg_monai.losses.image_similarity import LocalNormalizedCrossCorrelationLoss, SquaredLocalCorrelationLoss

__all__: list[str] = []

SHAPES = {1: (2, 3, 40), 2: (2, 3, 20, 24), 3: (2, 2, 12, 14, 16)}
KERNEL_TYPES = ("rectangular", "triangular", "gaussian")
REDUCTIONS = ("mean", "sum", "none")


def _pair(spatial_dims: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = SHAPES[spatial_dims]
    target = torch.rand(shape, generator=gen, dtype=dtype)
    pred = 0.6 * target + 0.4 * torch.rand(shape, generator=gen, dtype=dtype)  # partially correlated
    return pred, target


def _value_and_grads(
    loss_fn, pred: torch.Tensor, target: torch.Tensor, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss value and the gradients of ``sum(loss * w)`` (random ``w`` for the "none" map) w.r.t. both inputs."""
    pred = pred.clone().requires_grad_(True)
    target = target.clone().requires_grad_(True)
    value = loss_fn(pred, target)
    weight = torch.randn(value.shape, generator=torch.Generator().manual_seed(seed), dtype=value.dtype)
    (value * weight).sum().backward()
    return value.detach(), pred.grad, target.grad


def _assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """``max |actual - expected| <= tol * max(max |expected|, 1e-30)`` (relative to the largest entry)."""
    err = (actual - expected).abs().max().item()
    scale = max(expected.abs().max().item(), 1e-30)
    assert err <= tol * scale, f"max abs diff {err:.3e} > {tol:.1e} * {scale:.3e}"


def _dense_vxm(pred: torch.Tensor, target: torch.Tensor, kernel_size: int, eps: float = 1e-5) -> torch.Tensor:
    """Straightforward voxelmorph-style loss map with a dense ones kernel (one conv per map, per channel)."""
    spatial_dims = pred.ndim - 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial_dims - 1]
    channels = pred.shape[1]
    ones = torch.ones((channels, 1, *([kernel_size] * spatial_dims)), dtype=pred.dtype)
    n = float(kernel_size**spatial_dims)

    def window_sum(x: torch.Tensor) -> torch.Tensor:
        return conv(x, ones, padding=kernel_size // 2, groups=channels)

    i, j = pred, target
    s_i, s_j = window_sum(i), window_sum(j)
    s_ii, s_jj, s_ij = window_sum(i * i), window_sum(j * j), window_sum(i * j)
    u_i, u_j = s_i / n, s_j / n
    cross = s_ij - u_j * s_i - u_i * s_j + u_i * u_j * n
    var_i = s_ii - 2 * u_i * s_i + u_i * u_i * n
    var_j = s_jj - 2 * u_j * s_j + u_j * u_j * n
    return -(cross * cross / (var_i * var_j + eps))


# ---------------------------------------------------------------------------------------------------- LNCC vs MONAI


@pytest.mark.parametrize(
    "spatial_dims, kernel_size, kernel_type, reduction",
    list(itertools.product((2, 3), (3, 5, 7, 9), KERNEL_TYPES, REDUCTIONS)),
)
def test_lncc_matches_monai_float32(spatial_dims: int, kernel_size: int, kernel_type: str, reduction: str) -> None:
    pred, target = _pair(spatial_dims)
    ref = MonaiLNCC(spatial_dims, kernel_size, kernel_type, reduction)
    fast = LocalNormalizedCrossCorrelationLoss(spatial_dims, kernel_size, kernel_type, reduction)
    v_ref, gp_ref, gt_ref = _value_and_grads(ref, pred, target)
    v_fast, gp_fast, gt_fast = _value_and_grads(fast, pred, target)
    assert v_fast.shape == v_ref.shape
    assert v_fast.dtype == v_ref.dtype == torch.float32
    torch.testing.assert_close(v_fast, v_ref, rtol=1e-5, atol=1e-5)
    _assert_close_rel(gp_fast, gp_ref, 1e-5)
    _assert_close_rel(gt_fast, gt_ref, 1e-5)


@pytest.mark.parametrize(
    "spatial_dims, kernel_type, reduction, smooth_nr, smooth_dr",
    [
        (1, "rectangular", "mean", 0.0, 1e-5),
        (1, "gaussian", "none", 0.0, 1e-5),
        (1, "triangular", "sum", 1e-3, 1e-2),
        (2, "gaussian", "none", 1e-3, 1e-1),  # large smooth_dr: many variances are clamped
        (3, "triangular", "mean", 0.0, 1e-5),
        (3, "rectangular", "none", 1e-2, 1e-3),
    ],
)
def test_lncc_matches_monai_float64(
    spatial_dims: int, kernel_type: str, reduction: str, smooth_nr: float, smooth_dr: float
) -> None:
    pred, target = _pair(spatial_dims, torch.float64)
    args = (spatial_dims, 5, kernel_type, reduction, smooth_nr, smooth_dr)
    v_ref, gp_ref, gt_ref = _value_and_grads(MonaiLNCC(*args), pred, target)
    v_fast, gp_fast, gt_fast = _value_and_grads(LocalNormalizedCrossCorrelationLoss(*args), pred, target)
    torch.testing.assert_close(v_fast, v_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gp_fast, gp_ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gt_fast, gt_ref, rtol=1e-8, atol=1e-10)


def test_lncc_clamped_flat_regions_match_monai() -> None:
    """Constant patches (variance clamped to smooth_dr, zero gradient through it) as in MONAI."""
    pred, target = _pair(2, torch.float64)
    target[..., :8, :8] = 0.5
    pred[..., 10:, 12:] = 0.25
    v_ref, gp_ref, gt_ref = _value_and_grads(MonaiLNCC(2, 3, reduction="none"), pred, target)
    v_fast, gp_fast, gt_fast = _value_and_grads(
        LocalNormalizedCrossCorrelationLoss(2, 3, reduction="none"), pred, target
    )
    torch.testing.assert_close(v_fast, v_ref, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(gp_fast, gp_ref, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(gt_fast, gt_ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("requires", [(True, False), (False, True), (False, False)])
def test_lncc_partial_requires_grad(requires: tuple[bool, bool]) -> None:
    pred, target = _pair(3)
    pred.requires_grad_(requires[0])
    target.requires_grad_(requires[1])
    loss = LocalNormalizedCrossCorrelationLoss(3, 5)(pred, target)
    torch.testing.assert_close(loss, MonaiLNCC(3, 5)(pred, target), rtol=1e-5, atol=1e-6)
    assert loss.requires_grad == any(requires)
    if any(requires):
        loss.backward()
        assert (pred.grad is not None) == requires[0]
        assert (target.grad is not None) == requires[1]


def test_lncc_non_contiguous_and_no_grad() -> None:
    pred, target = _pair(3)
    pred_t, target_t = pred.transpose(2, 4), target.transpose(2, 4)
    assert not pred_t.is_contiguous()
    with torch.no_grad():
        fast = LocalNormalizedCrossCorrelationLoss(3, 7, "gaussian", "none")(pred_t, target_t)
    ref = MonaiLNCC(3, 7, "gaussian", "none")(pred_t, target_t)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(
    "mode, spatial_dims, reduction", [("lncc", 3, "mean"), ("lncc", 2, "none"), ("vxm", 3, "sum"), ("vxm", 2, "none")]
)
def test_gradcheck_float64(mode: str, spatial_dims: int, reduction: str) -> None:
    gen = torch.Generator().manual_seed(3)
    shape = (1, 2, 5, 6, 4)[: spatial_dims + 2]
    pred = torch.rand(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.rand(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    if mode == "lncc":

        def fn(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return local_normalized_cross_correlation_loss(p, t, 3, "gaussian", reduction, smooth_nr=1e-3)

    else:

        def fn(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return squared_local_correlation_loss(p, t, 3, reduction=reduction)

    assert torch.autograd.gradcheck(fn, (pred, target), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_double_backward_raises() -> None:
    pred, target = _pair(2, torch.float64)
    pred.requires_grad_(True)
    (grad,) = torch.autograd.grad(LocalNormalizedCrossCorrelationLoss(2)(pred, target), pred, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


# ---------------------------------------------------------------------------------------------------- identical images


@pytest.mark.parametrize("spatial_dims, kernel_type", [(2, "rectangular"), (3, "gaussian"), (3, "triangular")])
def test_identical_images_give_minus_one(spatial_dims: int, kernel_type: str) -> None:
    _, target = _pair(spatial_dims)
    lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims, 5, kernel_type)(target, target)
    vxm = SquaredLocalCorrelationLoss(spatial_dims, 5)(target, target)
    torch.testing.assert_close(lncc, torch.tensor(-1.0), rtol=0, atol=1e-4)
    torch.testing.assert_close(vxm, torch.tensor(-1.0), rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- NCC_vxm


@pytest.mark.parametrize("spatial_dims, kernel_size, reduction", list(itertools.product((2, 3), (3, 9), REDUCTIONS)))
def test_squared_local_correlation_matches_dense_conv(spatial_dims: int, kernel_size: int, reduction: str) -> None:
    pred, target = _pair(spatial_dims)

    def dense(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        loss_map = _dense_vxm(p, t, kernel_size)
        return {"mean": loss_map.mean(), "sum": loss_map.sum(), "none": loss_map}[reduction]

    v_ref, gp_ref, gt_ref = _value_and_grads(dense, pred, target)
    v_fast, gp_fast, gt_fast = _value_and_grads(
        SquaredLocalCorrelationLoss(spatial_dims, kernel_size, reduction=reduction), pred, target
    )
    assert v_fast.shape == v_ref.shape
    torch.testing.assert_close(v_fast, v_ref, rtol=1e-5, atol=1e-5)
    _assert_close_rel(gp_fast, gp_ref, 1e-5)
    _assert_close_rel(gt_fast, gt_ref, 1e-5)


def test_squared_local_correlation_flat_windows_are_zero() -> None:
    """No clamping: flat windows give cross = var = 0 and a zero loss, not -1 (windows at the border see the zero
    padding and are not flat)."""
    flat = torch.full((1, 1, 10, 12), 0.5)
    loss_map = SquaredLocalCorrelationLoss(2, 3, reduction="none")(flat, flat)
    torch.testing.assert_close(loss_map, _dense_vxm(flat, flat, 3), rtol=0, atol=1e-6)
    assert loss_map[..., 1:-1, 1:-1].abs().max() < 1e-6
    torch.testing.assert_close(loss_map[..., 0, :], torch.full((1, 1, 12), -1.0), rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- window filter


@pytest.mark.parametrize(
    "spatial_dims, kernel_size, kernel_type, shape",
    [
        (1, 3, "rectangular", (2, 3, 200)),  # long axis: shift-and-add path
        (2, 9, "gaussian", (1, 2, 30, 500)),  # mixed: band-matrix and shift-and-add
        (3, 5, "triangular", (2, 1, 7, 9, 11)),
        (3, 9, "rectangular", (1, 1, 4, 6, 5)),  # kernel longer than the axes
    ],
)
def test_separable_window_filter_matches_monai(
    spatial_dims: int, kernel_size: int, kernel_type: str, shape: tuple[int, ...]
) -> None:
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    kernel = make_window_kernel(kernel_size, kernel_type).double()
    torch.testing.assert_close(
        separable_window_filter(x, kernel, spatial_dims), separable_filtering(x, [kernel] * spatial_dims)
    )
    small = x.detach()[..., :4].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: separable_window_filter(v, kernel, spatial_dims), (small,))
    assert torch.autograd.gradgradcheck(lambda v: separable_window_filter(v, kernel, spatial_dims), (small,))


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "loss_cls, kwargs, pred_shape, target_shape, match",
    [
        (LocalNormalizedCrossCorrelationLoss, {"spatial_dims": 3}, (1, 1, 8, 8), (1, 1, 8, 8), "pred must have 5"),
        (LocalNormalizedCrossCorrelationLoss, {"spatial_dims": 2}, (1, 1, 8, 8), (1, 1, 8, 9), r"\(1, 1, 8, 9\)"),
        (LocalNormalizedCrossCorrelationLoss, {"spatial_dims": 2}, (1, 1, 8, 8), (1, 1, 8), "target must have 4"),
        (SquaredLocalCorrelationLoss, {"spatial_dims": 2}, (1, 1, 8, 8, 8), (1, 1, 8, 8, 8), "pred must have 4"),
        (SquaredLocalCorrelationLoss, {"spatial_dims": 3}, (1, 1, 8, 8, 8), (2, 1, 8, 8, 8), r"\(2, 1, 8, 8, 8\)"),
    ],
)
def test_shape_errors(loss_cls, kwargs, pred_shape, target_shape, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        loss_cls(**kwargs)(torch.rand(pred_shape), torch.rand(target_shape))


@pytest.mark.parametrize("loss_cls", [LocalNormalizedCrossCorrelationLoss, SquaredLocalCorrelationLoss])
@pytest.mark.parametrize("which, value", [("pred", float("nan")), ("target", float("inf"))])
def test_non_finite_errors(loss_cls, which: str, value: float) -> None:
    pred, target = torch.rand(1, 1, 6, 6, 6), torch.rand(1, 1, 6, 6, 6)
    {"pred": pred, "target": target}[which][0, 0, 1, 2, 3] = value
    with pytest.raises(ValueError, match=f"{which} contains non-finite"):
        loss_cls(3)(pred, target)


def test_device_mismatch_error() -> None:
    with pytest.raises(ValueError, match="same device"):
        LocalNormalizedCrossCorrelationLoss(2)(torch.rand(1, 1, 6, 6), torch.rand(1, 1, 6, 6, device="meta"))


@pytest.mark.parametrize(
    "loss_cls, kwargs, match",
    [
        (LocalNormalizedCrossCorrelationLoss, {"spatial_dims": 4}, "spatial_dims must be one of"),
        (LocalNormalizedCrossCorrelationLoss, {"kernel_size": 4}, "kernel_size must be an odd"),
        (LocalNormalizedCrossCorrelationLoss, {"kernel_size": 0}, "kernel_size must be an odd"),
        (LocalNormalizedCrossCorrelationLoss, {"kernel_type": "box"}, "kernel_type must be one of"),
        (LocalNormalizedCrossCorrelationLoss, {"reduction": "max"}, "max"),
        (SquaredLocalCorrelationLoss, {"spatial_dims": 4}, "spatial_dims must be one of"),
        (SquaredLocalCorrelationLoss, {"kernel_size": 8}, "kernel_size must be an odd"),
        (SquaredLocalCorrelationLoss, {"reduction": "max"}, "max"),
    ],
)
def test_constructor_errors(loss_cls, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        loss_cls(**kwargs)


def test_functional_errors() -> None:
    pred = torch.rand(1, 1, 6, 6)
    with pytest.raises(ValueError, match="kernel_size must be an odd"):
        local_normalized_cross_correlation_loss(pred, pred, kernel_size=2)
    with pytest.raises(ValueError, match="Unsupported reduction"):
        squared_local_correlation_loss(pred, pred, reduction="median")
    with pytest.raises(ValueError, match="spatial_dims must be one of"):
        squared_local_correlation_loss(pred, pred, spatial_dims=4)
    with pytest.raises(ValueError, match="pred must have 3 or 4 or 5"):
        local_normalized_cross_correlation_loss(torch.rand(6, 6), torch.rand(6, 6))
    with pytest.raises(TypeError, match="pred must be a torch.Tensor"):
        local_normalized_cross_correlation_loss([[0.0]], pred)
