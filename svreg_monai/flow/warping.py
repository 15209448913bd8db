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
"""Warping images, labels and displacement fields with MONAI's :class:`~monai.networks.blocks.Warp`.

Conventions (the same as MONAI ``Warp``/``DVF2DDF``): a dense displacement field (DDF) ``u`` has shape
``(B, N, *S)`` with ``N = len(S)``, is measured in voxels, and its channel ``i`` is the displacement along
tensor axis ``2 + i``. Warping is a pull-back: ``warp(image, u)(x) = image(x + u(x))``.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Warp

from svreg_monai.utils.precision import to_float32
from svreg_monai.utils.validation import check_ddf, check_same_device, check_tensor

__all__ = ["RegistrationWarp", "warp_image", "compose_ddf", "warp_labels"]


class RegistrationWarp(Warp):
    """MONAI :class:`~monai.networks.blocks.Warp` whose cached reference grid follows the input's device and dtype.

    MONAI's ``Warp`` caches its identity grid keyed on shape only, so a module first called on the CPU (or in
    float32) and later on CUDA (or in float64) reuses a grid on the wrong device or with the wrong precision.
    This subclass invalidates that cache, and samples in float32 under mixed precision: float16/bfloat16 inputs are
    cast to float32 (a 16-bit displacement is too coarse to warp with, see :mod:`svreg_monai.utils.precision`); the
    sampling itself is MONAI's.

    Args:
        mode: interpolation mode, ``"bilinear"`` (linear in 3D too), ``"nearest"`` or ``"bicubic"``.
        padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"``.
    """

    def __init__(self, mode: str = "bilinear", padding_mode: str = "zeros") -> None:
        super().__init__(mode=mode, padding_mode=padding_mode)

    def get_reference_grid(self, ddf: torch.Tensor, jitter: bool = False, seed: int = 0) -> torch.Tensor:
        if self.ref_grid is not None and (self.ref_grid.device != ddf.device or self.ref_grid.dtype != ddf.dtype):
            self.ref_grid = None
        return super().get_reference_grid(ddf, jitter=jitter, seed=seed)

    def forward(self, image: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image: ``(B, C, *S)`` image to warp.
            ddf: ``(B, N, *S)`` displacement in voxels.

        Returns:
            ``(B, C, *S)`` warped image, float32 if ``image`` or ``ddf`` was float16/bfloat16.
        """
        return super().forward(to_float32(image), to_float32(ddf))


def warp_image(
    image: torch.Tensor,
    ddf: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    warp: Warp | None = None,
) -> torch.Tensor:
    """Warp ``image`` by ``ddf`` (pull-back): ``out(x) = image(x + ddf(x))``.

    Args:
        image: ``(B, C, *S)``.
        ddf: ``(B, N, *S)`` displacement in voxels.
        mode: interpolation mode (ignored if ``warp`` is given).
        padding_mode: padding for samples outside the image (ignored if ``warp`` is given).
        warp: an existing warp layer to reuse (keeps its cached grid).

    Returns:
        ``(B, C, *S)`` warped image.
    """
    check_tensor(image, "image", ndim=(4, 5))
    check_ddf(ddf, "ddf", spatial_dims=image.ndim - 2, finite=False)
    if image.shape[0] != ddf.shape[0] or image.shape[2:] != ddf.shape[2:]:
        raise ValueError(
            f"image of shape {tuple(image.shape)} and ddf of shape {tuple(ddf.shape)} must have the same batch size "
            "and spatial size."
        )
    check_same_device(image=image, ddf=ddf)
    layer = warp if warp is not None else RegistrationWarp(mode=mode, padding_mode=padding_mode)
    return layer(image, ddf)


def compose_ddf(first: torch.Tensor, second: torch.Tensor, warp: Warp | None = None) -> torch.Tensor:
    """Displacement of the composition "warp by ``first``, then warp the result by ``second``".

    ``warp(warp(m, first), second)(x) = m(x + second(x) + first(x + second(x)))``, so the composed displacement is
    ``second + warp(first, second)``. Samples of ``first`` outside the field are zero-padded by default.

    Args:
        first: ``(B, N, *S)`` displacement applied to the image first, in voxels.
        second: ``(B, N, *S)`` displacement applied second, in voxels.
        warp: warp layer used to resample ``first`` (default: linear, zero padding).

    Returns:
        ``(B, N, *S)`` composed displacement in voxels.
    """
    check_ddf(first, "first", finite=False)
    check_ddf(second, "second", spatial_dims=first.ndim - 2, finite=False)
    if first.shape != second.shape:
        raise ValueError(f"first {tuple(first.shape)} and second {tuple(second.shape)} must have the same shape.")
    return second + warp_image(first, second, warp=warp)


def warp_labels(
    labels: torch.Tensor,
    ddf: torch.Tensor,
    num_classes: int | None = None,
    mode: str = "linear",
    padding_mode: str = "zeros",
    chunk_size: int = 8,
) -> torch.Tensor:
    """Warp an integer label map by ``ddf``.

    ``mode="linear"`` interpolates a one-hot encoding linearly and takes the arg-max (smoother boundaries than
    nearest neighbour and no label "bleeding" at sub-voxel shifts); the classes are processed ``chunk_size`` at a
    time with a running maximum, so the memory cost is ``chunk_size`` channels instead of ``num_classes``.
    ``mode="nearest"`` samples the nearest voxel. Outside the image the background label 0 is used
    (``padding_mode="zeros"``).

    Args:
        labels: ``(B, 1, *S)`` label map with values in ``[0, num_classes)`` (any numeric dtype).
        ddf: ``(B, N, *S)`` displacement in voxels.
        num_classes: number of classes for ``mode="linear"``; default ``labels.max() + 1``.
        mode: ``"linear"`` (one-hot linear + arg-max) or ``"nearest"``.
        padding_mode: padding for samples outside the image.
        chunk_size: classes interpolated at once in ``"linear"`` mode.

    Returns:
        ``(B, 1, *S)`` warped labels, same dtype as ``labels``.
    """
    check_tensor(labels, "labels", ndim=(4, 5), floating=False)
    check_ddf(ddf, "ddf", spatial_dims=labels.ndim - 2)
    if labels.shape[1] != 1 or labels.shape[0] != ddf.shape[0] or labels.shape[2:] != ddf.shape[2:]:
        raise ValueError(
            f"labels must have shape (B, 1, *S) = {(ddf.shape[0], 1, *ddf.shape[2:])} to match ddf, "
            f"got {tuple(labels.shape)}."
        )
    check_same_device(labels=labels, ddf=ddf)
    if mode == "nearest":
        layer = RegistrationWarp(mode="nearest", padding_mode=padding_mode)
        return layer(labels.to(ddf.dtype), ddf).round().to(labels.dtype)
    if mode not in ("linear", "bilinear"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    lab = labels.long()
    if lab.numel() and int(lab.min()) < 0:
        raise ValueError(f"labels must be non-negative integers, got minimum {int(lab.min())}.")
    max_label = int(lab.max()) if lab.numel() else 0
    if num_classes is None:
        num_classes = max_label + 1
    if max_label >= num_classes:
        raise ValueError(f"labels contain value {max_label}, which is >= num_classes={num_classes}.")
    layer = RegistrationWarp(mode="bilinear", padding_mode=padding_mode)
    best_val = torch.zeros_like(ddf[:, :1])
    best_idx = torch.zeros(labels.shape, dtype=torch.long, device=labels.device)
    with torch.no_grad():
        for start in range(0, num_classes, chunk_size):
            classes = torch.arange(start, min(start + chunk_size, num_classes), device=labels.device)
            view = (1, -1) + (1,) * (labels.ndim - 2)
            onehot = (lab == classes.view(view)).to(ddf.dtype)
            warped = layer(onehot, ddf.detach())
            val, idx = warped.max(dim=1, keepdim=True)
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx + start, best_idx)
    return best_idx.to(labels.dtype)
