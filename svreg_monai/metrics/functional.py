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
"""Stateless Jacobian-based regularity measures of a dense displacement field.

All functions take a displacement field ``ddf`` of shape ``(B, N, *S)`` with ``N = len(S)`` in ``{2, 3}``,
expressed in voxels, with channel order equal to the array axes: ``ddf[:, 0]`` is the displacement along tensor
axis 2, ``ddf[:, 1]`` along axis 3, and so on. The transform is ``phi(x) = x + ddf(x)``.

Border handling of the summary measures (NDP, NDV, NDT, SDlogJ): the finite-difference Jacobians of the voxels
on the one-voxel border of the image depend on values outside the field, so those voxels (and the matching
border of the mask) are excluded, following Liu et al., "On finite difference Jacobian computation in deformable
image registration", IJCV 2024. Percentages are taken over the number of (cropped) voxels inside the mask; a
sample whose cropped mask is empty gets NaN, which MONAI's ``do_metric_reduction`` skips.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch

from svreg_monai.utils.validation import check_ddf, check_tensor, check_weight_map

__all__ = [
    "NonDiffeomorphicMeasures",
    "jacobian_determinant",
    "negative_jacobian_percent",
    "non_diffeomorphic_volume",
    "non_diffeomorphic_measures",
    "sd_log_jacobian",
    "compute_jacobian_metrics",
]


class NonDiffeomorphicMeasures(NamedTuple):
    """Per-sample non-diffeomorphism measures, each of shape ``(B,)`` and in percent of the mask voxels.

    Attributes:
        ndp: non-diffeomorphic voxels, % of voxels whose central-difference ``det J <= 0``.
        ndt: non-diffeomorphic simplices (tetrahedra in 3D, triangles in 2D), % of the simplices with
            ``det <= 0``, each voxel carrying the same weight over all its simplices.
        ndv: non-diffeomorphic volume, % of the volume (area in 2D) of the folded simplices.
    """

    ndp: torch.Tensor
    ndt: torch.Tensor
    ndv: torch.Tensor


def _check_min_size(ddf: torch.Tensor, minimum: int, name: str = "ddf") -> None:
    if min(ddf.shape[2:]) < minimum:
        raise ValueError(
            f"{name} must have a spatial size of at least {minimum} along every axis, got shape {tuple(ddf.shape)}."
        )


def _prepare_mask(mask: torch.Tensor | None, ddf: torch.Tensor) -> torch.Tensor | None:
    """Validate a mask ``(B, 1, *S)`` or ``(1, 1, *S)`` (nonzero = inside) and return it as ``ddf.dtype``."""
    if mask is None:
        return None
    mask = check_tensor(mask, "mask", ndim=ddf.ndim, floating=False)
    if not mask.is_floating_point():
        mask = mask.to(ddf.dtype)
    mask = check_weight_map(mask, ddf, name="mask", ref_name="ddf", finite=True)
    return (mask != 0).to(ddf.dtype)


def _interior_mask(mask: torch.Tensor | None, ddf: torch.Tensor) -> torch.Tensor:
    """Return the validated mask cropped by one voxel on every side, as ``(B, *S')`` in ``ddf.dtype``."""
    size = tuple(s - 2 for s in ddf.shape[2:])
    if mask is None:
        return torch.ones((ddf.shape[0], *size), dtype=ddf.dtype, device=ddf.device)
    crop = (slice(None), 0) + (slice(1, -1),) * (ddf.ndim - 2)
    return mask[crop].expand(ddf.shape[0], *size)


def _shifted(ddf: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
    """Return ``ddf(p + offset)`` for every interior voxel ``p`` (one-voxel border removed), ``(B, N, *S')``."""
    index = [slice(None), slice(None)]
    for o, s in zip(offset, ddf.shape[2:]):
        index.append(slice(1 + o, s - 1 + o))
    return ddf[tuple(index)]


def _edge(ddf: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
    """Return the edge vector ``phi(p + offset) - phi(p)`` of the transform at the interior voxels, ``(B, N, *S')``.

    Because ``phi(x) = x + u(x)``, the edge is ``offset + u(p + offset) - u(p)``; the identity part is added
    exactly, which avoids the cancellation of forming absolute coordinates first.
    """
    diff = _shifted(ddf, offset) - _shifted(ddf, (0,) * len(offset))
    shift = torch.tensor(offset, dtype=ddf.dtype, device=ddf.device).reshape(1, -1, *([1] * len(offset)))
    return diff + shift


def _det(rows: list[torch.Tensor]) -> torch.Tensor:
    """Determinant of the ``N x N`` matrix whose row ``a`` is ``rows[a]`` (vector components in dim 1).

    Args:
        rows: ``N`` tensors of shape ``(B, N, *S)``.

    Returns:
        ``(B, *S)`` determinants.
    """
    if len(rows) == 2:
        r0, r1 = rows
        return r0[:, 0] * r1[:, 1] - r0[:, 1] * r1[:, 0]
    r0, r1, r2 = rows
    return (
        r0[:, 0] * (r1[:, 1] * r2[:, 2] - r1[:, 2] * r2[:, 1])
        - r0[:, 1] * (r1[:, 0] * r2[:, 2] - r1[:, 2] * r2[:, 0])
        + r0[:, 2] * (r1[:, 0] * r2[:, 1] - r1[:, 1] * r2[:, 0])
    )


def _unit(n: int, axis: int, sign: int = 1) -> tuple[int, ...]:
    return tuple(sign if a == axis else 0 for a in range(n))


def _central_det_interior(ddf: torch.Tensor) -> torch.Tensor:
    """Central-difference ``det J`` at the interior voxels, ``(B, *S')``."""
    n = ddf.ndim - 2
    rows = [0.5 * (_edge(ddf, _unit(n, a, 1)) - _edge(ddf, _unit(n, a, -1))) for a in range(n)]
    return _det(rows)


def _simplex_dets(ddf: torch.Tensor) -> list[torch.Tensor]:
    """Signed ``N!``-times-volume of every simplex of the digital-diffeomorphism schemes, at the interior voxels.

    In 2D: the 4 one-sided Jacobians ``(+x+y, +x-y, -x+y, -x-y)``, each twice the signed area of the triangle
    spanned by the voxel and two of its axis neighbours. In 3D: the 8 one-sided Jacobians
    ``(+x+y+z, ..., -x-y-z)`` (six times the signed volume of a corner tetrahedron) followed by the two central
    tetrahedra ``J*_1`` (edges to the neighbours at offsets ``(-1,-1,0), (-1,0,-1), (0,-1,-1)``) and ``J*_2``
    (offsets ``(1,1,0), (0,1,1), (1,0,1)``), each also six times a signed volume.

    Returns:
        a list of ``(B, *S')`` tensors (4 in 2D, 10 in 3D); all equal 1 (one-sided) or 2 (central) for the identity.
    """
    n = ddf.ndim - 2
    dets = []
    for signs in itertools.product((1, -1), repeat=n):
        rows = [s * _edge(ddf, _unit(n, a, s)) for a, s in enumerate(signs)]
        dets.append(_det(rows))
    if n == 3:
        dets.append(_det([_edge(ddf, o) for o in ((-1, -1, 0), (-1, 0, -1), (0, -1, -1))]))
        dets.append(_det([_edge(ddf, o) for o in ((1, 1, 0), (0, 1, 1), (1, 0, 1))]))
    return dets


def _masked_percent(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``100 * sum(values * mask) / sum(mask)`` per sample; NaN where the mask is empty."""
    dims = tuple(range(1, values.ndim))
    return 100.0 * (values * mask).sum(dim=dims) / mask.sum(dim=dims)


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of ``phi(x) = x + ddf(x)`` at every voxel.

    Spatial derivatives are central differences ``(u[i+1] - u[i-1]) / 2`` in the interior and first-order
    one-sided differences (``u[1] - u[0]``, ``u[-1] - u[-2]``) on the border, as ``numpy.gradient`` with
    ``edge_order=1``. The result is therefore exact for affine fields everywhere, border included. The summary
    measures of this module exclude the border voxels, where the stencil differs.

    Args:
        ddf: displacement field ``(B, N, *S)`` in voxels, ``N`` in ``{2, 3}``, every spatial size >= 2.

    Returns:
        ``(B, 1, *S)`` tensor of Jacobian determinants (dimensionless), in ``ddf``'s dtype and device.

    Raises:
        ValueError: when ``ddf`` has the wrong number of dimensions or channels, contains NaN/Inf, or is too small.
    """
    ddf = check_ddf(ddf)
    _check_min_size(ddf, 2)
    n = ddf.ndim - 2
    grads = torch.gradient(ddf, dim=tuple(range(2, ddf.ndim)))
    eye = torch.eye(n, dtype=ddf.dtype, device=ddf.device)
    rows = [grads[a] + eye[a].reshape(1, n, *([1] * n)) for a in range(n)]
    return _det(rows).unsqueeze(1)


def negative_jacobian_percent(ddf: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Percentage of voxels with a non-positive central-difference Jacobian determinant (NDP, ``% |J| <= 0``).

    The one-voxel border is excluded from both the determinants and the mask (see the module docstring), so
    that the value matches the ``'0x0y0z'`` count of Liu et al. (2024).

    Args:
        ddf: displacement field ``(B, N, *S)`` in voxels, every spatial size >= 3.
        mask: optional ``(B, 1, *S)`` or ``(1, 1, *S)`` region (nonzero = inside; any dtype), same device.

    Returns:
        ``(B,)`` percentages in ``[0, 100]``; NaN for a sample with an empty (cropped) mask.

    Raises:
        ValueError: on a malformed or non-finite ``ddf`` or ``mask``.
    """
    ddf = check_ddf(ddf)
    _check_min_size(ddf, 3)
    m = _interior_mask(_prepare_mask(mask, ddf), ddf)
    return _masked_percent((_central_det_interior(ddf) <= 0).to(ddf.dtype), m)


def sd_log_jacobian(ddf: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-9) -> torch.Tensor:
    """Standard deviation of ``log(det J)`` (SDlogJ) of the central-difference Jacobian determinant.

    Determinants are clamped to ``eps`` before the logarithm, so a folded voxel contributes ``log(eps)``.
    The standard deviation is the population one (divisor = number of voxels, as ``numpy.std``), over the
    interior voxels inside the mask (one-voxel border excluded, as for :func:`negative_jacobian_percent`).

    Args:
        ddf: displacement field ``(B, N, *S)`` in voxels, every spatial size >= 3.
        mask: optional ``(B, 1, *S)`` or ``(1, 1, *S)`` region (nonzero = inside), same device.
        eps: positive lower clamp of the determinant before the logarithm.

    Returns:
        ``(B,)`` standard deviations (dimensionless, >= 0); NaN for a sample with an empty (cropped) mask.

    Raises:
        ValueError: on a malformed or non-finite ``ddf`` or ``mask``, or ``eps <= 0``.
    """
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a positive finite float, got {eps!r}.")
    ddf = check_ddf(ddf)
    _check_min_size(ddf, 3)
    m = _interior_mask(_prepare_mask(mask, ddf), ddf)
    log_j = torch.log(torch.clamp(_central_det_interior(ddf), min=eps))
    dims = tuple(range(1, log_j.ndim))
    count = m.sum(dim=dims)
    mean = (log_j * m).sum(dim=dims) / count
    centred = log_j - mean.reshape(-1, *([1] * (log_j.ndim - 1)))
    return torch.sqrt((centred.square() * m).sum(dim=dims) / count)


def non_diffeomorphic_measures(ddf: torch.Tensor, mask: torch.Tensor | None = None) -> NonDiffeomorphicMeasures:
    """Digital-diffeomorphism measures NDP, NDT and NDV of Liu et al. (IJCV 2024).

    3D: each voxel cube can be divided into five tetrahedra in two ways; together the two divisions use the
    8 corner tetrahedra (one-sided Jacobians ``+x+y+z ... -x-y-z``) and the 2 central tetrahedra
    (``J*_1``, ``J*_2``) attached to a voxel. Each determinant equals six times the signed tetrahedron
    volume, and the two divisions are averaged, so per voxel::

        NDV_voxel = sum over the 10 schemes of 0.5 * max(-J, 0) / 6
        NDT_voxel = sum over the 10 schemes of (J <= 0) / 10

    2D: each pixel square can be split along either diagonal into two triangles; the 4 corner triangles
    (one-sided Jacobians ``+x+y, +x-y, -x+y, -x-y``) cover both splittings, each determinant equals twice the
    signed triangle area, so ``NDV_voxel = sum over 4 schemes of 0.5 * max(-J, 0) / 2`` and
    ``NDT_voxel = sum over 4 schemes of (J <= 0) / 4``.

    For the identity the per-voxel volumes sum to exactly one voxel. NDV, NDT and NDP (central differences)
    are summed over the interior voxels inside the mask and divided by their number; the one-voxel border is
    cropped from the determinants and from the mask.

    Args:
        ddf: displacement field ``(B, N, *S)`` in voxels, every spatial size >= 3.
        mask: optional ``(B, 1, *S)`` or ``(1, 1, *S)`` region (nonzero = inside), same device.

    Returns:
        :class:`NonDiffeomorphicMeasures` ``(ndp, ndt, ndv)``, each ``(B,)`` in percent; NaN for an empty mask.

    Raises:
        ValueError: on a malformed or non-finite ``ddf`` or ``mask``.
    """
    ddf = check_ddf(ddf)
    _check_min_size(ddf, 3)
    n = ddf.ndim - 2
    m = _interior_mask(_prepare_mask(mask, ddf), ddf)
    dets = _simplex_dets(ddf)
    volume = torch.zeros_like(m)
    folded = torch.zeros_like(m)
    for det in dets:
        volume = volume + torch.clamp(-det, min=0)
        folded = folded + (det <= 0).to(ddf.dtype)
    volume = volume * (0.5 / math.factorial(n))
    folded = folded / len(dets)
    ndp = _masked_percent((_central_det_interior(ddf) <= 0).to(ddf.dtype), m)
    return NonDiffeomorphicMeasures(ndp=ndp, ndt=_masked_percent(folded, m), ndv=_masked_percent(volume, m))


def non_diffeomorphic_volume(ddf: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Non-diffeomorphic volume (NDV, in %) of Liu et al. (IJCV 2024); see :func:`non_diffeomorphic_measures`.

    Args:
        ddf: displacement field ``(B, N, *S)`` in voxels, every spatial size >= 3.
        mask: optional ``(B, 1, *S)`` or ``(1, 1, *S)`` region (nonzero = inside), same device.

    Returns:
        ``(B,)`` folded volume as a percentage of the interior mask volume; NaN for an empty mask.

    Raises:
        ValueError: on a malformed or non-finite ``ddf`` or ``mask``.
    """
    return non_diffeomorphic_measures(ddf, mask).ndv


def compute_jacobian_metrics(ddf: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-9) -> torch.Tensor:
    """NDP, NDV and SDlogJ of every sample, stacked as columns.

    Args:
        ddf: displacement field ``(B, N, *S)`` in voxels, every spatial size >= 3.
        mask: optional ``(B, 1, *S)`` or ``(1, 1, *S)`` region (nonzero = inside), same device.
        eps: lower clamp of the determinant before the logarithm of SDlogJ.

    Returns:
        ``(B, 3)`` tensor with columns ``[ndp (%), ndv (%), sd_log_j]``.
    """
    measures = non_diffeomorphic_measures(ddf, mask)
    sd = sd_log_jacobian(ddf, mask, eps=eps)
    return torch.stack([measures.ndp, measures.ndv, sd], dim=1)
