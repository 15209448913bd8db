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
"""ITK images and transforms from MONAI-convention arrays, written atomically.

MONAI arrays are indexed along their array axes with a RAS voxel-to-world affine; ITK images are indexed
``(x, y, z)`` with origin, spacing and direction in LPS (see :mod:`svreg_monai.utils.world`). These helpers
do that conversion once: a displacement field becomes an ITK vector image of LPS millimetres
(``itk.VectorImage[itk.D, N]``, which ``itk.DisplacementFieldTransform``, ``antsApplyTransforms`` and
SimpleITK's ``DisplacementFieldTransform`` read), an affine world map becomes an ``itk.AffineTransform`` in LPS.
ITK is imported on first use (it takes seconds to load).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor

from svreg_monai.utils.io import atomic_path
from svreg_monai.utils.world import check_affine, ras_to_lps

__all__ = [
    "itk_image",
    "itk_affine_transform",
    "itk_displacement_transform",
    "itk_composite_transform",
    "write_itk_image",
    "write_itk_transform",
]


def _itk() -> Any:
    import itk

    return itk


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = convert_to_tensor(x, track_meta=False).detach().cpu().numpy()
    return np.asarray(x)


def itk_image(array: np.ndarray | torch.Tensor, affine: np.ndarray | torch.Tensor, vector: bool = False) -> Any:
    """An ITK image (float64 pixels) of a channel-first MONAI array with a RAS affine.

    Args:
        array: ``(C, *S)``; ``C == 1`` gives a scalar image, ``vector=True`` an image of ``C``-vectors (for a
            displacement field, ``C = N``; the components are written as they are, so convert them to LPS first).
            Vector images are ``itk.VectorImage[itk.D, N]`` (ITK Python wraps no buffer for
            ``itk.Image[itk.Vector[itk.D, N], N]``); ``itk.DisplacementFieldTransform`` and the writers accept it.
        affine: ``(N+1, N+1)`` RAS voxel-to-world matrix of the array.
        vector: write the channels as vector components.

    Returns:
        the ITK image, with LPS origin, spacing and direction.
    """
    itk = _itk()
    data = _numpy(array).astype(np.float64)
    n = data.ndim - 1
    a = ras_to_lps(n) @ check_affine(affine, spatial_dims=n)
    spacing = np.linalg.norm(a[:n, :n], axis=0)
    # ITK's numpy view is indexed [z, y, x]: reverse the spatial axes
    if vector:
        values = np.ascontiguousarray(np.moveaxis(data, 0, -1).transpose(*reversed(range(n)), n))
        image = itk.image_from_array(values, is_vector=True)  # itk.VectorImage[itk.D, N]: the wrapped vector type
    else:
        if data.shape[0] != 1:
            raise ValueError(f"a scalar image must have one channel, got shape {data.shape}; set vector=True.")
        image = itk.image_from_array(np.ascontiguousarray(data[0].transpose(*reversed(range(n)))))
    image.SetOrigin([float(v) for v in a[:n, n]])
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(a[:n, :n] / spacing)))
    return image


def itk_affine_transform(matrix: np.ndarray | torch.Tensor) -> Any:
    """An ``itk.AffineTransform[itk.D, N]`` for a world-to-world map given in RAS (fixed -> moving points).

    Args:
        matrix: ``(N+1, N+1)`` homogeneous matrix ``q = M p + b`` in RAS millimetres.

    Returns:
        the transform in LPS (``F M F``, ``F b`` with ``F = diag(-1, -1, 1)``), centre at the origin.
    """
    itk = _itk()
    m = check_affine(matrix, "matrix")
    n = m.shape[0] - 1
    flip = ras_to_lps(n)
    lps = flip @ m @ flip
    transform = itk.AffineTransform[itk.D, n].New()
    transform.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(lps[:n, :n])))
    transform.SetTranslation([float(v) for v in lps[:n, n]])
    return transform


def itk_displacement_transform(world_ddf: np.ndarray | torch.Tensor, affine: np.ndarray | torch.Tensor) -> Any:
    """An ``itk.DisplacementFieldTransform[itk.D, N]`` for a world displacement field given in RAS millimetres.

    Args:
        world_ddf: ``(N, *S)`` displacement in RAS millimetres (channel ``i`` = world axis ``i``, see
            :func:`~svreg_monai.utils.world.ddf_to_world`) at the voxels of a grid.
        affine: the grid's RAS voxel-to-world matrix.

    Returns:
        the transform; its field (``GetDisplacementField()``) holds LPS millimetres on the grid in LPS.
    """
    itk = _itk()
    d = _numpy(world_ddf).astype(np.float64)
    n = d.shape[0]
    if d.ndim != n + 1:
        raise ValueError(f"world_ddf must have shape (N, *S) with N = {d.ndim - 1} spatial axes, got {d.shape}.")
    lps = np.einsum("ij,j...->i...", ras_to_lps(n)[:n, :n], d)
    transform = itk.DisplacementFieldTransform[itk.D, n].New()
    transform.SetDisplacementField(itk_image(lps, affine, vector=True))
    return transform


def itk_composite_transform(transforms: Sequence[Any]) -> Any:
    """A ``CompositeTransform`` applying ``transforms`` to a point **in the order given**.

    ITK applies the transform added last first; this adds them in reverse so that
    ``itk_composite_transform([a, b]).TransformPoint(p) == a_then_b(p)``, e.g. ``[displacement, affine]`` for the
    fixed -> moving map of a deformable registration after an affine pre-alignment.
    """
    itk = _itk()
    if not transforms:
        raise ValueError("transforms must not be empty.")
    n = transforms[0].GetInputSpaceDimension()
    composite = itk.CompositeTransform[itk.D, n].New()
    for t in reversed(transforms):
        composite.AddTransform(t)
    return composite


def write_itk_transform(transform: Any, path: str | os.PathLike) -> Path:
    """Write an ITK transform atomically: ``.h5`` (HDF5, composites), ``.mat`` (ANTs' affine) or ``.tfm``/``.txt``."""
    itk = _itk()
    with atomic_path(path, fsync=False) as tmp:
        itk.transformwrite([transform], str(tmp))
    return Path(path)


def write_itk_image(image: Any, path: str | os.PathLike, compression: bool = True) -> Path:
    """Write an ITK image atomically; the format follows the suffix (``.nii.gz`` vector images as ANTs reads)."""
    itk = _itk()
    with atomic_path(path, fsync=False) as tmp:
        itk.imwrite(image, str(tmp), compression=compression)
    return Path(path)
