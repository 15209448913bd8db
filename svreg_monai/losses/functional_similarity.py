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
"""Fast local (windowed) correlation losses: the stateless functions behind :mod:`.image_similarity`.

Two losses share one engine:

- :func:`local_normalized_cross_correlation_loss` gives the value of MONAI's
  ``monai.losses.LocalNormalizedCrossCorrelationLoss`` (same kernels, same clamping of the variances at
  ``smooth_dr``, same ``reduction``), several times faster on CPU;
- :func:`squared_local_correlation_loss` is the voxelmorph-style squared correlation
  ``-mean(cross^2 / (var_I var_J + eps))`` with a rectangular window (called ``NCC_vxm`` in the reference code).

Why it is faster than MONAI's (which is correct, and already separable): MONAI filters each of the five local
moment maps ``t, p, t^2, p^2, t p`` separately, with one padded depthwise ``conv{N}d`` per map and axis
(15 convolutions in 3D), and autograd then differentiates every convolution, pad and elementwise temporary. Here

1. the five maps are stacked along a leading batch axis and each axis is filtered once for all of them;
2. a 1D zero-padded filter along an axis of length ``n`` is a banded ``(n, n)`` matrix, so it is applied as one
   matrix product over the other axes (``torch.mm``/``torch.matmul`` on views, no permutes, no padding copies):
   BLAS runs it near peak even though most of the band matrix is zero (~0.04-0.10 s per axis for the 5 stacked
   160x192x224 maps). For short kernels on long axes (see
   :data:`MATMUL_MAX_RATIO`) a shift-and-add loop of ``k`` fused passes is cheaper and is used instead;
3. the loss is one ``torch.autograd.Function`` whose backward is written out by hand: the gradient of the
   window sums is again a window filter (the adjoint of a zero-padded correlation with kernel ``w`` is the
   correlation with the flipped kernel, ``w`` itself for these symmetric kernels), so backward filters only the
   three (or five, when ``target`` needs a gradient too) maps it needs, with no autograd graph of temporaries.

Alternatives that were measured and dropped (160x192x224, 5 stacked maps, 2 CPU threads, per axis): box filtering
by cumulative sums (independent of the kernel size, ~0.07-0.14 s, no faster than the band matmul at k = 9 and it
loses float32 precision to cancellation between large prefix sums, max error 9e-6 vs 2e-6), and ``conv1d`` over a
flattened batch after moving the axis last (~0.6-1.0 s per axis). End to end (forward +
backward, 160x192x224, batch 1, float32, kernel size 9, 2 CPU threads on a shared, noisy machine) it took 0.33-0.87 s
against 6-13 s for MONAI's, 13-30x faster, with the same loss value and gradients equal to 1e-6 relative; see
``benchmarks/bench_components.py``.

The engine is first-order differentiable only (``once_differentiable``): a double backward raises an error instead
of returning a wrong second derivative. Use MONAI's implementation for higher-order gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses.image_dissimilarity import (
    make_gaussian_kernel,
    make_rectangular_kernel,
    make_triangular_kernel,
)
from monai.utils import LossReduction
from torch.autograd.function import once_differentiable

from svreg_monai.utils.validation import check_finite, check_same_device, check_spatial_dims, check_tensor

__all__ = [
    "KERNEL_TYPES",
    "MATMUL_MAX_RATIO",
    "SIMILARITY_SPATIAL_DIMS",
    "make_window_kernel",
    "separable_window_filter",
    "local_normalized_cross_correlation_loss",
    "squared_local_correlation_loss",
]

KERNEL_TYPES = ("rectangular", "triangular", "gaussian")
"""Window kernels, identical to MONAI's ``LocalNormalizedCrossCorrelationLoss`` kernels."""

MATMUL_MAX_RATIO = 48
"""An axis of length ``n`` is filtered by a band-matrix product when ``n <= MATMUL_MAX_RATIO * kernel_size``, and
by shift-and-add otherwise (a product costs ``~n`` multiply-adds per voxel at BLAS speed, shift-and-add ``k``
memory-bound passes)."""

SIMILARITY_SPATIAL_DIMS = (1, 2, 3)
"""Spatial dimensionalities supported by the local correlation losses (as MONAI's LNCC)."""
_LOOP_MAX_LEAD = 16
_MODE_LNCC = "lncc"
_MODE_VXM = "vxm"


def make_window_kernel(kernel_size: int, kernel_type: str = "rectangular") -> torch.Tensor:
    """Return the 1D window kernel used by the local correlation losses.

    The kernels are MONAI's (``monai.losses.image_dissimilarity``), so that the fast loss matches MONAI's value.

    Args:
        kernel_size: odd positive window size.
        kernel_type: one of ``"rectangular"`` (ones), ``"triangular"``, ``"gaussian"`` (unnormalised,
            ``sigma = kernel_size / 3``).

    Returns:
        a float32 tensor of shape ``(kernel_size,)``.

    Raises:
        ValueError: if ``kernel_size`` is not an odd positive integer or ``kernel_type`` is unknown.
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive integer, got {kernel_size!r}.")
    makers = {
        "rectangular": make_rectangular_kernel,
        "triangular": make_triangular_kernel,
        "gaussian": make_gaussian_kernel,
    }
    if kernel_type not in makers:
        raise ValueError(f"kernel_type must be one of {KERNEL_TYPES}, got {kernel_type!r}.")
    return makers[kernel_type](kernel_size).to(torch.float32)


def _band_matrix(n: int, weights: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(n, n)`` matrix ``K`` with ``(K x)[i] = sum_j w[j] x[i + j - r]`` (zero padding), ``r = len(w) // 2``."""
    r = len(weights) // 2
    band = torch.zeros(n, n, dtype=dtype, device=device)
    for j in range(-r, r + 1):
        if abs(j) < n:
            band.diagonal(j).fill_(weights[j + r])
    return band


def _filter_axis(x: torch.Tensor, dim: int, weights: Sequence[float], out: torch.Tensor) -> torch.Tensor:
    """Zero-padded 1D correlation of contiguous ``x`` with ``weights`` along ``dim``, written into ``out``."""
    n = x.shape[dim]
    k = len(weights)
    if n <= MATMUL_MAX_RATIO * k:
        band = _band_matrix(n, weights, x.dtype, x.device)
        if dim == x.ndim - 1:
            torch.mm(x.view(-1, n), band.t(), out=out.view(-1, n))
        else:
            lead = x.shape[:dim].numel()
            x3, out3 = x.view(lead, n, -1), out.view(lead, n, -1)
            if lead <= _LOOP_MAX_LEAD:
                # a few large products: plain mm calls avoid the broadcast of ``band`` to a batch
                for i in range(lead):
                    torch.mm(band, x3[i], out=out3[i])
            else:
                torch.matmul(band, x3, out=out3)
        return out
    r = k // 2
    torch.mul(x, weights[r], out=out)
    for j in range(1, min(r, n - 1) + 1):
        # out[i] += w[r - j] x[i - j] and out[i] += w[r + j] x[i + j]
        out.narrow(dim, j, n - j).add_(x.narrow(dim, 0, n - j), alpha=weights[r - j])
        out.narrow(dim, 0, n - j).add_(x.narrow(dim, j, n - j), alpha=weights[r + j])
    return out


def _filter_owned(x: torch.Tensor, weights: Sequence[float], spatial_dims: int) -> torch.Tensor:
    """Filter the last ``spatial_dims`` axes of a contiguous tensor that the caller owns (it is overwritten)."""
    buffer = torch.empty_like(x)
    for dim in range(x.ndim - spatial_dims, x.ndim):
        result = _filter_axis(x, dim, weights, buffer)
        x, buffer = result, x
    return x


class _WindowFilter(torch.autograd.Function):
    """Separable zero-padded window filter whose backward is the filter with the flipped kernel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weights: tuple[float, ...], spatial_dims: int) -> torch.Tensor:  # type: ignore[override]
        ctx.weights = weights
        ctx.spatial_dims = spatial_dims
        return _filter_owned(x.detach().clone(memory_format=torch.contiguous_format), weights, spatial_dims)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        # not once_differentiable: the adjoint is itself this (linear) function, so double backward works.
        return _WindowFilter.apply(grad, tuple(reversed(ctx.weights)), ctx.spatial_dims), None, None


def separable_window_filter(x: torch.Tensor, kernel: torch.Tensor | Sequence[float], spatial_dims: int) -> torch.Tensor:
    """Correlate every channel of ``x`` with the separable window ``kernel x kernel [x kernel]``, zero padding.

    Equal to ``monai.networks.layers.separable_filtering(x, [kernel] * spatial_dims)`` for an odd-sized kernel, but
    applies each axis as one band-matrix product (or shift-and-add) over all batch items and channels at once.
    Differentiable (any order): the backward pass is the same filter with the flipped kernel.

    Args:
        x: tensor of shape ``(B, C, H[, W, D])`` (any leading dims, the last ``spatial_dims`` are filtered).
        kernel: odd-sized 1D kernel, a tensor of shape ``(k,)`` or a sequence of floats.
        spatial_dims: number of trailing spatial axes to filter, 1, 2 or 3.

    Returns:
        tensor of the same shape and dtype as ``x``.
    """
    spatial_dims = check_spatial_dims(spatial_dims, SIMILARITY_SPATIAL_DIMS)
    x = check_tensor(x, "x")
    if x.ndim < spatial_dims:
        raise ValueError(f"x must have at least {spatial_dims} dimensions, got shape {tuple(x.shape)}.")
    weights = tuple(float(v) for v in (kernel.reshape(-1).tolist() if isinstance(kernel, torch.Tensor) else kernel))
    if len(weights) % 2 == 0:
        raise ValueError(f"kernel must have an odd number of elements, got {len(weights)}.")
    return _WindowFilter.apply(x, weights, spatial_dims)


class _LocalCorrelation(torch.autograd.Function):
    """Fused local squared correlation (both the MONAI LNCC and the voxelmorph form), hand-written backward.

    With ``S`` the window filter and per voxel ``St, Sp, Stt, Spp, Stp`` the filtered ``t, p, t^2, p^2, t p``,
    ``ta = St / n``, ``pa = Sp / n``: ``cross = Stp - pa St``, ``tv = Stt - ta St``, ``pv = Spp - pa Sp`` and
    ``lncc``: ``c = (cross^2 + nr) / (max(tv, dr) max(pv, dr))``;  ``vxm``: ``c = cross^2 / (tv pv + dr)``.
    The loss map is ``-c``. With ``gamma = dL/d(-c)``, ``h = dc/dcross``, ``e = -dc/dtv``, ``f = -dc/dpv``:
    ``dL/dSp = gamma (h ta - 2 f pa)``, ``dL/dSpp = gamma f``, ``dL/dStp = -gamma h`` (and symmetrically for ``t``),
    and ``dL/dp = S(dL/dSp) + 2 p S(dL/dSpp) + t S(dL/dStp)`` because ``S`` is self-adjoint.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        pred: torch.Tensor,
        target: torch.Tensor,
        weights: tuple[float, ...],
        spatial_dims: int,
        kernel_vol: float,
        mode: str,
        smooth_nr: float,
        smooth_dr: float,
        reduction: str,
        grad_enabled: bool,
    ) -> torch.Tensor:
        # ``needs_input_grad`` is also set under ``torch.no_grad()``: skip the backward state there
        need_p, need_t = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        shape = pred.shape
        stack = torch.empty((5, *shape), dtype=pred.dtype, device=pred.device)
        stack[0].copy_(target)
        stack[1].copy_(pred)
        torch.mul(target, target, out=stack[2])
        torch.mul(pred, pred, out=stack[3])
        torch.mul(target, pred, out=stack[4])
        sums = _filter_owned(stack.view(-1, *shape[2:]), weights, spatial_dims).view(5, *shape)
        t_sum, p_sum, tt_sum, pp_sum, tp_sum = sums.unbind(0)

        t_avg = t_sum / kernel_vol
        p_avg = p_sum / kernel_vol
        # in place, product rounded before the subtraction as in MONAI (addcmul_ may fuse it into an FMA, which
        # turns an exact cancellation such as S[tp] - S[t] S[p] for a one-voxel window into a rounding residual)
        scratch = torch.empty_like(t_avg)
        cross = tp_sum.sub_(torch.mul(p_avg, t_sum, out=scratch))  # Stp - pa St
        t_var = tt_sum.sub_(torch.mul(t_avg, t_sum, out=scratch))
        p_var = pp_sum.sub_(torch.mul(p_avg, p_sum, out=scratch))
        need_grad = need_p or need_t
        if mode == _MODE_LNCC:
            if need_grad:
                # d max(v, dr) / dv: 1 above, 1/2 at a tie (as torch.maximum), 0 below
                t_w = torch.heaviside(t_var - smooth_dr, t_var.new_tensor(0.5))
                p_w = torch.heaviside(p_var - smooth_dr, p_var.new_tensor(0.5))
            t_var.clamp_min_(smooth_dr)
            p_var.clamp_min_(smooth_dr)
            denom = t_var * p_var
        else:
            denom = torch.mul(t_var, p_var).add_(smooth_dr)
        corr = cross * cross
        if mode == _MODE_LNCC and smooth_nr != 0.0:
            corr.add_(smooth_nr)
        corr.div_(denom)

        if need_grad:
            h = torch.div(cross, denom).mul_(2.0)
            if mode == _MODE_LNCC:
                e = torch.div(corr, t_var).mul_(t_w) if need_t else None
                f = torch.div(corr, p_var).mul_(p_w) if need_p else None
            else:
                e = torch.mul(corr, p_var).div_(denom) if need_t else None
                f = torch.mul(corr, t_var).div_(denom) if need_p else None
            ctx.save_for_backward(pred, target, t_avg, p_avg, h, e, f)
        ctx.weights = weights
        ctx.spatial_dims = spatial_dims
        ctx.reduction = reduction
        ctx.numel = corr.numel()

        if reduction == LossReduction.MEAN.value:
            return corr.mean().neg()
        if reduction == LossReduction.SUM.value:
            return corr.sum().neg()
        return corr.neg_()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        pred, target, t_avg, p_avg, h, e, f = ctx.saved_tensors
        need_p, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gamma = grad_out / ctx.numel if ctx.reduction == LossReduction.MEAN.value else grad_out
        shape = pred.shape
        n_maps = 1 + 2 * int(need_p) + 2 * int(need_t)
        stack = torch.empty((n_maps, *shape), dtype=pred.dtype, device=pred.device)
        # slot 0: dL/dStp = -gamma h;  then (dL/dSp, dL/dSpp) and/or (dL/dSt, dL/dStt)
        torch.mul(h, gamma, out=stack[0]).neg_()
        slot = 1
        if need_p:
            torch.mul(h, t_avg, out=stack[slot]).addcmul_(f, p_avg, value=-2.0).mul_(gamma)
            torch.mul(f, gamma, out=stack[slot + 1])
            slot += 2
        if need_t:
            torch.mul(h, p_avg, out=stack[slot]).addcmul_(e, t_avg, value=-2.0).mul_(gamma)
            torch.mul(e, gamma, out=stack[slot + 1])
        flipped = tuple(reversed(ctx.weights))
        filtered = _filter_owned(stack.view(-1, *shape[2:]), flipped, ctx.spatial_dims).view(n_maps, *shape)
        grad_p = grad_t = None
        slot = 1
        if need_p:
            grad_p = filtered[slot].addcmul_(pred, filtered[slot + 1], value=2.0).addcmul_(target, filtered[0])
            slot += 2
        if need_t:
            grad_t = filtered[slot].addcmul_(target, filtered[slot + 1], value=2.0).addcmul_(pred, filtered[0])
        return grad_p, grad_t, None, None, None, None, None, None, None, None


def _validate_pair(pred: object, target: object, spatial_dims: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    if spatial_dims is None:
        pred = check_tensor(pred, "pred", ndim=tuple(d + 2 for d in SIMILARITY_SPATIAL_DIMS))
        spatial_dims = pred.ndim - 2
    else:
        spatial_dims = check_spatial_dims(spatial_dims, SIMILARITY_SPATIAL_DIMS)
        pred = check_tensor(pred, "pred", ndim=spatial_dims + 2)
    target = check_tensor(target, "target", ndim=spatial_dims + 2)
    if target.shape != pred.shape:
        raise ValueError(
            f"target must have the same shape as pred {tuple(pred.shape)}, got target shape {tuple(target.shape)}."
        )
    check_same_device(pred=pred, target=target)
    for name, x in (("pred", pred), ("target", target)):
        # a NaN/Inf makes the sum non-finite: one cheap reduction, and the full check (with counts) only then
        if not (torch.jit.is_scripting() or torch.jit.is_tracing()) and not bool(torch.isfinite(x.sum())):
            check_finite(x, name)
    if pred.dtype != target.dtype:
        dtype = torch.promote_types(pred.dtype, target.dtype)
        pred, target = pred.to(dtype), target.to(dtype)
    return pred, target, spatial_dims


def _check_reduction(reduction: LossReduction | str) -> str:
    try:
        return LossReduction(reduction).value
    except ValueError:
        raise ValueError(
            f'Unsupported reduction: {reduction!r}, available options are ["mean", "sum", "none"].'
        ) from None


def local_normalized_cross_correlation_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    kernel_size: int = 3,
    kernel_type: str = "rectangular",
    reduction: LossReduction | str = LossReduction.MEAN,
    smooth_nr: float = 0.0,
    smooth_dr: float = 1e-5,
    spatial_dims: int | None = None,
) -> torch.Tensor:
    """Local squared zero-normalised cross-correlation loss with the value of MONAI's LNCC loss.

    Per voxel, with window sums ``S`` (kernel ``kernel_type`` of size ``kernel_size`` on every axis, zero padding)
    and ``n`` the kernel volume: ``cross = S[tp] - S[t] S[p] / n``, ``var_t = max(S[t^2] - S[t]^2 / n, smooth_dr)``
    (same for ``p``) and ``ncc = (cross^2 + smooth_nr) / (var_t var_p)``; the loss map is ``-ncc`` (in ``[-1, 0]``
    up to the smoothing terms, -1 for perfectly correlated windows).

    Args:
        pred: moving/predicted image of shape ``(B, C, H[, W, D])``.
        target: fixed image, same shape and device as ``pred``.
        kernel_size: odd window size.
        kernel_type: ``"rectangular"``, ``"triangular"`` or ``"gaussian"`` (MONAI's kernels).
        reduction: ``"mean"`` (mean over all voxels, channels and batch), ``"sum"``, or ``"none"`` for the
            per-voxel map of shape ``(B, C, H[, W, D])``.
        smooth_nr: constant added to the numerator.
        smooth_dr: lower bound of the local variances (clamping, as MONAI).
        spatial_dims: expected number of spatial dims (1, 2 or 3); inferred from ``pred`` if None.

    Returns:
        a scalar, or the ``(B, C, H[, W, D])`` loss map for ``reduction="none"``.

    Raises:
        ValueError: on wrong dimensionality, mismatched shapes or devices, non-finite values, an even kernel size,
            an unknown kernel type or reduction.
    """
    reduction = _check_reduction(reduction)
    pred, target, spatial_dims = _validate_pair(pred, target, spatial_dims)
    kernel = make_window_kernel(kernel_size, kernel_type)
    # the window volume as MONAI computes it (sum of the float32 outer product), so that values match closely
    vol = kernel
    for _ in range(spatial_dims - 1):
        vol = torch.matmul(vol.unsqueeze(-1), kernel.unsqueeze(0))
    kernel_vol = float(vol.sum())
    weights = tuple(kernel.tolist())
    return _LocalCorrelation.apply(
        pred,
        target,
        weights,
        spatial_dims,
        kernel_vol,
        _MODE_LNCC,
        float(smooth_nr),
        float(smooth_dr),
        reduction,
        torch.is_grad_enabled(),
    )


def squared_local_correlation_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    kernel_size: int = 9,
    smooth_dr: float = 1e-5,
    reduction: LossReduction | str = LossReduction.MEAN,
    spatial_dims: int | None = None,
) -> torch.Tensor:
    """Voxelmorph-style local squared correlation loss (``NCC_vxm`` in the reference code).

    With rectangular window sums ``S`` of size ``kernel_size`` per axis (zero padding), window volume ``n`` and
    ``u_I = S[I] / n``: ``cross = S[IJ] - u_J S[I] - u_I S[J] + u_I u_J n``,
    ``var_I = S[I^2] - 2 u_I S[I] + u_I^2 n`` (same for ``J``), and the loss map is
    ``-cross^2 / (var_I var_J + smooth_dr)``. Algebraically ``cross = S[IJ] - S[I] S[J] / n`` and
    ``var_I = S[I^2] - S[I]^2 / n``, which is how it is evaluated. Unlike MONAI's LNCC the variances are not
    clamped: ``smooth_dr`` is added to their product, so flat windows give 0 rather than a large ratio.
    Channels are treated independently (the reference code supports one channel).

    Args:
        pred: moving/warped image of shape ``(B, C, H[, W, D])`` (``I``).
        target: fixed image, same shape and device (``J``).
        kernel_size: odd window size (9 in the reference).
        smooth_dr: constant added to ``var_I var_J``.
        reduction: ``"mean"``, ``"sum"``, or ``"none"`` for the per-voxel map ``(B, C, H[, W, D])``.
        spatial_dims: expected number of spatial dims (1, 2 or 3); inferred from ``pred`` if None.

    Returns:
        a scalar, or the ``(B, C, H[, W, D])`` loss map for ``reduction="none"``.

    Raises:
        ValueError: on wrong dimensionality, mismatched shapes or devices, non-finite values, an even kernel size
            or an unknown reduction.
    """
    reduction = _check_reduction(reduction)
    pred, target, spatial_dims = _validate_pair(pred, target, spatial_dims)
    kernel = make_window_kernel(kernel_size, "rectangular")
    weights = tuple(kernel.tolist())
    kernel_vol = float(kernel_size**spatial_dims)
    return _LocalCorrelation.apply(
        pred,
        target,
        weights,
        spatial_dims,
        kernel_vol,
        _MODE_VXM,
        0.0,
        float(smooth_dr),
        reduction,
        torch.is_grad_enabled(),
    )
