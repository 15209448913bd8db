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
"""Displayable maps of a displacement field: a line grid, the grid deformed by the field, and log det J.

Conventions as in :mod:`svreg_monai.flow.warping`: a displacement ``ddf`` has shape ``(B, N, *S)``, is measured
in voxels, channel ``i`` is the displacement along tensor axis ``2 + i``, and warping is the pull-back
``out(x) = image(x + ddf(x))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from svreg_monai.metrics.functional import jacobian_determinant
from svreg_monai.utils.validation import check_ddf

__all__ = ["grid_image", "deformed_grid", "log_jacobian_map"]


def _check_grid_args(spacing: int, thickness: int, n: int, axes: Sequence[int] | None) -> tuple[int, ...]:
    if isinstance(spacing, bool) or not isinstance(spacing, int) or spacing < 2:
        raise ValueError(f"spacing must be an integer >= 2 (voxels between lines), got {spacing!r}.")
    if isinstance(thickness, bool) or not isinstance(thickness, int) or not 1 <= thickness < spacing:
        raise ValueError(f"thickness must be an integer in [1, spacing={spacing}), got {thickness!r}.")
    if axes is None:
        return tuple(range(n))
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, int) or not -n <= a < n:
            raise ValueError(f"axes must be spatial axes in [{-n}, {n}), got {tuple(axes)!r}.")
        out.append(a % n)
    if not out:
        raise ValueError("axes must name at least one spatial axis, got an empty sequence.")
    return tuple(sorted(set(out)))


def _line_profile(coord: torch.Tensor, spacing: int, thickness: int) -> torch.Tensor:
    """Intensity of the lines ``{k * spacing + t : t in [0, thickness - 1]}`` at (real) positions ``coord``.

    1 on a line, falling linearly to 0 one voxel away from it: at integer positions this is the binary grid, in
    between it equals the linear interpolation of the binary grid.
    """
    r = torch.remainder(coord, spacing)
    below = r - (thickness - 1)  # > 0: past the end of the line
    dist = torch.minimum(torch.clamp(below, min=0.0), spacing - r)  # spacing - r: distance to the next line
    return torch.clamp(1.0 - dist, min=0.0)


def _render_grid(
    coords: Sequence[torch.Tensor], shape: Sequence[int], spacing: int, thickness: int, axes: tuple[int, ...]
) -> torch.Tensor:
    """Maximum over ``axes`` of the line profiles at ``coords``; 0 where a coordinate falls outside the image."""
    out = torch.zeros_like(coords[0])
    for a in axes:
        out = torch.maximum(out, _line_profile(coords[a], spacing, thickness))
    inside = torch.ones_like(out, dtype=torch.bool)
    for c, s in zip(coords, shape):
        inside &= (c >= 0) & (c <= s - 1)
    return out * inside


def grid_image(
    spatial_shape: Sequence[int],
    spacing: int = 8,
    thickness: int = 1,
    axes: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Binary image of grid lines: voxel ``x`` is 1 when ``x[a] mod spacing < thickness`` for an axis ``a`` in ``axes``.

    In 2D this draws lines; in 3D each axis contributes a family of planes, so for a view of slices along one axis
    pass the other two as ``axes`` (otherwise a slice lying on a plane is entirely white).

    Args:
        spatial_shape: ``S``, the spatial size ``(H, W[, D])``.
        spacing: distance between lines, in voxels (>= 2).
        thickness: line width in voxels, ``1 <= thickness < spacing``.
        axes: spatial axes (0-based, negative allowed) across which lines are drawn; default: all.
        dtype: floating dtype of the result.
        device: device of the result.

    Returns:
        ``(1, 1, *S)`` tensor of 0 and 1.
    """
    shape = tuple(spatial_shape)
    if len(shape) not in (2, 3) or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"spatial_shape must be 2 or 3 positive integers, got {spatial_shape!r}.")
    axes_t = _check_grid_args(spacing, thickness, len(shape), axes)
    out = torch.zeros(shape, dtype=torch.bool, device=device)
    for a in axes_t:
        on_line = torch.arange(shape[a], device=device) % spacing < thickness
        view = [1] * len(shape)
        view[a] = shape[a]
        out |= on_line.view(view)
    return out.to(dtype)[None, None]


def deformed_grid(
    ddf: torch.Tensor,
    spacing: int = 8,
    thickness: int = 1,
    axes: Sequence[int] | None = None,
) -> torch.Tensor:
    """The grid of :func:`grid_image` warped by ``ddf`` (pull-back): ``out(x) = grid(x + ddf(x))``.

    The grid is evaluated analytically at the displaced positions (a line is 1 at its voxels and falls linearly to
    0 one voxel away), which equals the linear interpolation of the binary grid along each axis without resampling
    error, so a zero ``ddf`` returns :func:`grid_image` exactly. Positions outside the image give 0, like the zero
    padding of :func:`~svreg_monai.flow.warp_image`.

    Args:
        ddf: ``(B, N, *S)`` displacement in voxels (channel order = array axes).
        spacing: distance between lines, in voxels (>= 2).
        thickness: line width in voxels, ``1 <= thickness < spacing``.
        axes: spatial axes across which lines are drawn; default: all (see :func:`grid_image`).

    Returns:
        ``(B, 1, *S)`` tensor in ``[0, 1]``, in ``ddf``'s dtype and device.
    """
    ddf = check_ddf(ddf, finite=False)
    n = ddf.ndim - 2
    shape = tuple(ddf.shape[2:])
    axes_t = _check_grid_args(spacing, thickness, n, axes)
    identity = torch.meshgrid(*(torch.arange(s, dtype=ddf.dtype, device=ddf.device) for s in shape), indexing="ij")
    coords = [identity[a] + ddf[:, a] for a in range(n)]
    out = _render_grid(coords, shape, spacing, thickness, axes_t)
    return torch.nan_to_num(out, nan=0.0).unsqueeze(1)


def log_jacobian_map(ddf: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Log of the Jacobian determinant of ``phi(x) = x + ddf(x)``, clamped below at ``eps``.

    The determinant is :func:`~svreg_monai.metrics.jacobian_determinant`: central differences inside and one-sided
    differences on the one-voxel border, so the map has the full size of ``ddf`` (no padding needed) and is exact
    for affine fields everywhere. 0 means no volume change, > 0 expansion, < 0 compression; folded voxels
    (``det J <= 0``) show as ``log(eps)``.

    Args:
        ddf: ``(B, N, *S)`` displacement in voxels, finite, every spatial size >= 2.
        eps: positive lower clamp of the determinant.

    Returns:
        ``(B, 1, *S)`` tensor of ``log(max(det J, eps))``, in ``ddf``'s dtype and device.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive float, got {eps!r}.")
    det = jacobian_determinant(ddf)
    return torch.log(torch.clamp(det, min=eps))
