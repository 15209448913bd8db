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
"""Resampling a displacement field to another grid size, with its values rescaled to the new voxel size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from svreg_monai.utils.validation import check_ddf

__all__ = ["resize_ddf"]


def resize_ddf(
    ddf: torch.Tensor,
    scale_factor: float | Sequence[float] | None = None,
    size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Resample a displacement field and rescale its values so it describes the same physical deformation.

    The field is interpolated (bi/trilinear, ``align_corners=False``, i.e. voxel centres of a grid scaled about
    its outer edges, as the reference implementation upsamples its half-resolution flow) and channel ``i`` is
    multiplied by ``new_size[i] / old_size[i]``, since displacements are measured in voxels of the grid.
    For ``scale_factor=2`` this is the reference's ``interpolate(flow, scale_factor=2) * 2``.

    Args:
        ddf: ``(B, N, *S)`` displacement in voxels of the input grid.
        scale_factor: one factor, or one per spatial axis. Exactly one of ``scale_factor`` and ``size`` is given.
        size: the output spatial size.

    Returns:
        ``(B, N, *S')`` displacement in voxels of the output grid.
    """
    check_ddf(ddf, "ddf", finite=False)
    n = ddf.ndim - 2
    in_size = ddf.shape[2:]
    if (scale_factor is None) == (size is None):
        raise ValueError(f"give exactly one of scale_factor and size, got scale_factor={scale_factor}, size={size}.")
    if size is not None:
        out_size = tuple(int(s) for s in size)
        if len(out_size) != n or any(s < 1 for s in out_size):
            raise ValueError(f"size must be {n} positive integers for a {n}D field, got {size}.")
        factors = [o / i for o, i in zip(out_size, in_size)]
    else:
        factors = (
            [float(scale_factor)] * n if isinstance(scale_factor, (int, float)) else [float(f) for f in scale_factor]
        )
        if len(factors) != n or any(f <= 0 for f in factors):
            raise ValueError(f"scale_factor must be a positive number or {n} positive numbers, got {scale_factor}.")
        out_size = tuple(int(i * f) for i, f in zip(in_size, factors))
        if any(s < 1 for s in out_size):
            raise ValueError(f"scale_factor {scale_factor} shrinks size {tuple(in_size)} below one voxel.")
    mode = "bilinear" if n == 2 else "trilinear"
    if out_size == tuple(in_size):
        return ddf
    if size is None:
        resized = F.interpolate(ddf, scale_factor=tuple(factors), mode=mode, align_corners=False)
    else:
        resized = F.interpolate(ddf, size=out_size, mode=mode, align_corners=False)
    scale = torch.tensor(factors, dtype=ddf.dtype, device=ddf.device).view(1, n, *([1] * n))
    return resized * scale
