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
"""World (physical) coordinates of images and displacement fields.

Conventions (MONAI's): an image is a channel-first array ``(C, *S)`` with a ``(N+1, N+1)`` affine that maps voxel
indices ``(i, j, k)`` (array axes, first index first) to world coordinates in millimetres in **RAS** (+x towards
the subject's right, +y anterior, +z superior), as nibabel and MONAI's ``LoadImage`` give it for NIfTI, and for
ITK formats (MHA, NRRD) after MONAI converts ITK's LPS. ITK, ANTs, SimpleITK
and 3D Slicer's transform files use **LPS** millimetres: the first two world axes are negated
(:data:`RAS_TO_LPS`).

A world transform here is a pull-back map from the fixed image's world to the moving image's world (as ITK's
``ResampleImageFilter`` uses it): ``warped(p) = moving(T(p))``. A displacement ``u`` in voxels of a grid with affine
``A`` (channel ``i`` = array axis ``i``, :mod:`svreg_monai.flow.warping`) is the world displacement
``A[:N, :N] @ u`` at the world point ``A @ x``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor

from svreg_monai.utils.validation import check_option

__all__ = [
    "RAS_TO_LPS",
    "check_affine",
    "ras_to_lps",
    "world_coordinates",
    "world_to_voxel",
    "sample_at_world_points",
    "ddf_to_world",
    "resample_through",
    "transform_points",
    "PADDING_MODES",
]


def ras_to_lps(spatial_dims: int = 3) -> np.ndarray:
    """The ``(N+1, N+1)`` matrix that negates the first two world axes (its own inverse): RAS <-> LPS."""
    flip = np.eye(spatial_dims + 1)
    flip[0, 0] = flip[1, 1] = -1.0
    return flip


RAS_TO_LPS = ras_to_lps(3)


def check_affine(affine: object, name: str = "affine", spatial_dims: int | None = None) -> np.ndarray:
    """Return ``affine`` as a float64 ``(N+1, N+1)`` array after checking that it is a usable voxel-to-world map.

    Args:
        affine: a ``(N+1, N+1)`` array or tensor.
        name: what to call it in error messages (e.g. ``"affine of 'fixed.nii.gz'"``).
        spatial_dims: expected ``N``; any of 2 and 3 if None.

    Raises:
        ValueError: when it has the wrong shape, holds NaN/Inf, its last row is not ``(0, ..., 0, 1)``, or its
            linear part is singular (a zero or collinear voxel axis, e.g. a zero voxel size in a header).
    """
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    a = np.asarray(affine, dtype=np.float64)
    n = a.shape[0] - 1 if a.ndim == 2 else -1
    if a.ndim != 2 or a.shape[0] != a.shape[1] or n not in ((spatial_dims,) if spatial_dims else (2, 3)):
        want = f"({spatial_dims + 1}, {spatial_dims + 1})" if spatial_dims else "(3, 3) or (4, 4)"
        raise ValueError(f"{name} must be a {want} matrix, got shape {a.shape}.")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or Inf values:\n{a}")
    if not np.allclose(a[n], np.eye(n + 1)[n], atol=1e-6):
        raise ValueError(f"the last row of {name} must be {np.eye(n + 1)[n].tolist()}, got {a[n].tolist()}.")
    sv = np.linalg.svd(a[:n, :n], compute_uv=False)
    if sv.min() <= 1e-6 * max(sv.max(), 1e-12):
        raise ValueError(
            f"{name} is degenerate (singular values of its linear part {sv.round(6).tolist()}): a voxel axis has "
            f"zero length or two axes coincide; check the header's voxel sizes and orientation.\n{a}"
        )
    return a


def world_coordinates(
    affine: np.ndarray | torch.Tensor, spatial_shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """World coordinates of every voxel centre of a grid.

    Args:
        affine: ``(N+1, N+1)`` voxel-to-world matrix.
        spatial_shape: the grid's shape ``S`` (``N`` entries).
        dtype: dtype of the result (the product is formed in float64).

    Returns:
        ``(*S, N)`` tensor of world coordinates (millimetres, in the affine's world: RAS for MONAI affines).
    """
    a = torch.as_tensor(check_affine(affine, spatial_dims=len(spatial_shape)))
    n = len(spatial_shape)
    out = a[:n, n].to(dtype).expand(*spatial_shape, n).clone()
    for i, s in enumerate(spatial_shape):  # broadcast one axis at a time: no (*S, N) index array
        view = [1] * n
        view[i] = int(s)
        out += torch.arange(int(s), dtype=torch.float64).reshape(*view, 1).mul(a[:n, i]).to(dtype)
    return out


def world_to_voxel(points: torch.Tensor, affine: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Voxel (continuous index) coordinates of world points: ``A^-1 p``.

    Args:
        points: ``(*P, N)`` world coordinates.
        affine: ``(N+1, N+1)`` voxel-to-world matrix of the grid.

    Returns:
        ``(*P, N)`` continuous indices along the array axes, in ``points``' dtype.
    """
    n = points.shape[-1]
    inv = torch.as_tensor(np.linalg.inv(check_affine(affine, spatial_dims=n)), dtype=points.dtype, device=points.device)
    return points @ inv[:n, :n].T + inv[:n, n]


PADDING_MODES = ("zeros", "border", "reflection", "itk")


def sample_at_world_points(
    image: torch.Tensor,
    affine: np.ndarray | torch.Tensor,
    points: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "itk",
) -> torch.Tensor:
    """Interpolate a channel-first image at world points.

    Args:
        image: ``(C, *S)`` image (``N = len(S)`` in {2, 3}).
        affine: its ``(N+1, N+1)`` voxel-to-world matrix.
        points: ``(*P, N)`` world coordinates in the same world as ``affine`` (``len(P) = N``).
        mode: ``"bilinear"`` (linear in 3D) or ``"nearest"``, as :func:`torch.nn.functional.grid_sample`.
        padding_mode: what lies outside the voxel centres: ``"itk"`` (default) the edge values up to half a voxel
            beyond the outer centres and 0 further out, as ITK's interpolators and ``IsInsideBuffer`` (so that ITK
            resampling with our transform files reproduces our results up to the grid's boundary); or
            :func:`~torch.nn.functional.grid_sample`'s ``"zeros"`` (fading to 0 over the last voxel),
            ``"border"`` or ``"reflection"``.

    Returns:
        ``(C, *P)`` samples in ``image``'s dtype if floating, else float32 (the points are used in that dtype).
    """
    n = image.ndim - 1
    if points.shape[-1] != n or points.ndim != n + 1:
        raise ValueError(f"points must have shape (*P, {n}) with {n} grid axes, got {tuple(points.shape)}.")
    check_option(padding_mode, PADDING_MODES, "padding_mode")
    data = image if image.is_floating_point() else image.float()
    data = convert_to_tensor(data, track_meta=False)
    vox = world_to_voxel(points.to(data.dtype), affine)
    shape = torch.tensor(image.shape[1:], dtype=vox.dtype, device=vox.device)
    grid = (2.0 * vox / (shape - 1).clamp_min(1) - 1.0).flip(-1)  # grid_sample wants the last array axis first
    pad = "border" if padding_mode == "itk" else padding_mode
    out = F.grid_sample(data[None], grid[None].to(data.device), mode=mode, padding_mode=pad, align_corners=True)[0]
    if padding_mode == "itk":
        inside = ((vox >= -0.5) & (vox < shape - 0.5)).all(dim=-1)  # ITK: [start - 0.5, end + 0.5)
        out = out * inside.to(out.device, out.dtype)
    return out


def transform_points(
    points: torch.Tensor,
    matrix: np.ndarray | None = None,
    world_ddf: torch.Tensor | None = None,
    ddf_affine: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Map world points through a displacement field, then an affine map: ``q = matrix @ (p + d(p))``.

    ``d`` is interpolated linearly on its grid with ITK's boundary rule (edge values up to half a voxel outside,
    zero beyond), so this is what ITK's ``CompositeTransform([affine, displacement]).TransformPoint`` computes
    (displacement applied first), in RAS instead of LPS.

    Args:
        points: ``(*P, N)`` world points (RAS mm).
        matrix: ``(N+1, N+1)`` world-to-world affine map, identity if None.
        world_ddf: ``(N, *S_d)`` world displacement in millimetres (see :func:`ddf_to_world`), or None.
        ddf_affine: voxel-to-world matrix of ``world_ddf``'s grid (required with ``world_ddf``).

    Returns:
        ``(*P, N)`` mapped points, in ``points``' dtype.
    """
    if world_ddf is not None:
        if ddf_affine is None:
            raise ValueError("ddf_affine is required with world_ddf.")
        disp = sample_at_world_points(world_ddf.to(points.dtype), ddf_affine, points)
        points = points + torch.movedim(disp, 0, -1)
    if matrix is not None:
        n = points.shape[-1]
        m = torch.as_tensor(check_affine(matrix, "matrix", spatial_dims=n), dtype=points.dtype)
        points = points @ m[:n, :n].T + m[:n, n]
    return points


def ddf_to_world(ddf: torch.Tensor, affine: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Convert a displacement in voxels of a grid into millimetres in that grid's world.

    Args:
        ddf: ``(B, N, *S)`` or ``(N, *S)`` displacement in voxels (channel ``i`` = array axis ``i``).
        affine: the grid's ``(N+1, N+1)`` voxel-to-world matrix.

    Returns:
        the world displacement ``A[:N, :N] @ u`` with the shape of ``ddf`` (channel ``i`` = world axis ``i``).
    """
    a = torch.as_tensor(affine)
    n = a.shape[-1] - 1
    if ddf.ndim not in (n + 1, n + 2) or ddf.shape[ddf.ndim - n - 1] != n:
        raise ValueError(
            f"ddf must have shape (B, {n}, *S) or ({n}, *S) for a ({n + 1}, {n + 1}) affine, got {tuple(ddf.shape)}."
        )
    batched = ddf.ndim == n + 2
    x = ddf if batched else ddf[None]
    lin = torch.as_tensor(check_affine(affine, spatial_dims=n)[:n, :n], dtype=x.dtype, device=x.device)
    out = torch.einsum("ij,bj...->bi...", lin, x)
    return out if batched else out[0]


def resample_through(
    image: torch.Tensor,
    image_affine: np.ndarray | torch.Tensor,
    target_affine: np.ndarray | torch.Tensor,
    target_shape: Sequence[int],
    matrix: np.ndarray | None = None,
    world_ddf: torch.Tensor | None = None,
    ddf_affine: np.ndarray | torch.Tensor | None = None,
    mode: str = "bilinear",
    padding_mode: str = "itk",
) -> torch.Tensor:
    """Resample ``image`` onto a target grid through a deformable and an affine world transform, in one interpolation.

    For every target voxel centre ``p`` (world) the output is ``image(q)`` with ``q`` from :func:`transform_points`.
    With the default ``padding_mode="itk"`` this is ITK's ``ResampleImageFilter`` with the composite transform
    ``[affine, displacement]`` (displacement applied first) and a linear (or nearest-neighbour) interpolator, in
    RAS instead of LPS.

    Args:
        image: ``(C, *S_in)`` image to resample.
        image_affine: its voxel-to-world matrix.
        target_affine: voxel-to-world matrix of the output grid.
        target_shape: the output grid's spatial shape.
        matrix: ``(N+1, N+1)`` world-to-world affine map (fixed -> moving), identity if None.
        world_ddf: ``(N, *S_d)`` world displacement in millimetres (see :func:`ddf_to_world`), or None.
        ddf_affine: voxel-to-world matrix of ``world_ddf``'s grid (required with ``world_ddf``).
        mode: ``"bilinear"`` or ``"nearest"`` (labels).
        padding_mode: value outside ``image``, see :func:`sample_at_world_points`.

    Returns:
        ``(C, *target_shape)`` resampled image (float32 unless ``image`` is float64).
    """
    dtype = image.dtype if image.dtype == torch.float64 else torch.float32
    points = transform_points(
        world_coordinates(target_affine, target_shape, dtype=dtype), matrix, world_ddf, ddf_affine
    )
    return sample_at_world_points(image, image_affine, points, mode=mode, padding_mode=padding_mode)
