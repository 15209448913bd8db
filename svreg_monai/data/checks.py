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
"""Validation of loaded registration pairs, so that bad data fail early with a message naming the file.

Put :class:`CheckRegistrationPaird` right after the loading transform (``LoadImaged`` / ``LoadIXIPickled``): a
shape mismatch, a NaN or an unexpected label value then raises a ``ValueError`` naming the files instead of a
shape error deep inside the network or a silently wrong Dice score.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform
from nibabel.orientations import aff2axcodes

from svreg_monai.utils import RegistrationKeys

__all__ = ["CheckRegistrationPaird"]

_MAX_LISTED = 10


def _describe(key: Hashable, value: Any, kind: str = "") -> str:
    """``"<key> [<kind> ]'<file>'"`` (e.g. ``"fixed image 'sub-003.nii.gz'"``) when the value knows its file
    (``MetaTensor.meta["filename_or_obj"]``), else ``"<key>[ <kind>]"``."""
    name = value.meta.get("filename_or_obj") if isinstance(value, MetaTensor) else None
    if isinstance(name, (list, tuple)):  # collated meta data
        name = name[0] if len(name) == 1 else None
    prefix = f"{key} {kind}" if kind else f"{key}"
    return f"{prefix} '{name}'" if name else prefix


def _as_tensor(key: Hashable, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.as_tensor(value)
    raise ValueError(
        f"{key} must be a loaded array/tensor of shape (C, *spatial), got {type(value).__name__}"
        f"{f' {value!r}' if isinstance(value, str) else ''}; load the files first (e.g. LoadImaged)."
    )


class CheckRegistrationPaird(MapTransform):
    """Check one loaded, un-batched registration item and return it unchanged.

    Checks, with error messages naming the key and file (from ``meta["filename_or_obj"]``):

    - every image and label has a channel dimension first, shape ``(C, *S)`` with ``len(S) == spatial_dims``,
      labels with ``C == 1``, images with ``C == image_channels`` (a 4D file of several volumes is named as such);
    - moving, fixed and label images have the same spatial shape ``S`` and, when they carry affines (MONAI
      ``MetaTensor``), the same affine: the datalist workflows register by voxel index, so a LAS copy of a RAS
      image, or another voxel size, would silently register a mirrored or stretched image (resample by the
      headers first, or register the pair with the bundle's ``configs/register.json``);
    - images hold finite values;
    - labels hold whole numbers, all in ``label_values`` (plus the background 0 if ``allow_background``);
    - if ``max_spatial_size`` is given, ``S`` is not larger than it in any dimension.

    Args:
        keys: image keys, required, default ``("moving", "fixed")``.
        label_keys: label keys, checked when present in the item, default ``("moving_label", "fixed_label")``.
        label_values: allowed label values, or None to skip that check.
        allow_background: also allow the label 0 when ``label_values`` is given.
        spatial_dims: number of spatial dimensions (2 or 3).
        image_channels: channels every image must have (the network's ``in_channels``; 1 for the brain models);
            None to skip.
        max_spatial_size: largest spatial size the network accepts (its ``image_size``: images are zero-padded to
            it by the bundle's ``RegistrationInferer``), an int for all dimensions or one per dimension; None to skip.
        divisible_by: the network's sizes must be multiples of this (32 for the TransMorph family); used to check
            ``max_spatial_size`` and to suggest an ``image_size`` in the error message. None to skip.
        allow_missing_keys: if True, image keys may also be missing.
        check_affines: require the same affine (within ``affine_tolerance`` mm) for every item with one.
        affine_tolerance: largest difference of an affine entry (millimetres) counted as equal.

    Example::

        Compose([
            LoadImaged(keys=["moving", "fixed", "moving_label", "fixed_label"], ensure_channel_first=True),
            CheckRegistrationPaird(label_values=DEMO_LABEL_VALUES, max_spatial_size=(96, 96, 96)),
        ])
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable = (RegistrationKeys.MOVING, RegistrationKeys.FIXED),
        label_keys: Sequence[Hashable] | Hashable = (RegistrationKeys.MOVING_LABEL, RegistrationKeys.FIXED_LABEL),
        label_values: Sequence[int] | None = None,
        allow_background: bool = True,
        spatial_dims: int = 3,
        image_channels: int | None = 1,
        max_spatial_size: Sequence[int] | int | None = None,
        divisible_by: int | None = 32,
        allow_missing_keys: bool = False,
        check_affines: bool = True,
        affine_tolerance: float = 1e-3,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.check_affines = bool(check_affines)
        self.affine_tolerance = float(affine_tolerance)
        if isinstance(label_keys, str) or not isinstance(label_keys, Sequence):
            label_keys = (label_keys,)
        self.label_keys = tuple(label_keys)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        self.spatial_dims = int(spatial_dims)
        if image_channels is not None and (isinstance(image_channels, bool) or int(image_channels) < 1):
            raise ValueError(f"image_channels must be a positive integer or None, got {image_channels!r}.")
        self.image_channels = None if image_channels is None else int(image_channels)
        self.label_values: np.ndarray | None = None
        if label_values is not None:
            values = {int(v) for v in label_values} | ({0} if allow_background else set())
            self.label_values = np.array(sorted(values), dtype=np.int64)
        if divisible_by is not None and (isinstance(divisible_by, bool) or int(divisible_by) < 1):
            raise ValueError(f"divisible_by must be a positive integer or None, got {divisible_by!r}.")
        self.divisible_by = None if divisible_by is None else int(divisible_by)
        self.max_spatial_size: tuple[int, ...] | None = None
        if max_spatial_size is not None:
            size = (
                (int(max_spatial_size),) * self.spatial_dims
                if isinstance(max_spatial_size, int)
                else tuple(int(s) for s in max_spatial_size)
            )
            if len(size) != self.spatial_dims or min(size) < 1:
                raise ValueError(
                    f"max_spatial_size must be a positive int or {self.spatial_dims} positive ints, "
                    f"got {max_spatial_size!r}."
                )
            if self.divisible_by is not None and any(s % self.divisible_by for s in size):
                raise ValueError(
                    f"max_spatial_size {size} must be a multiple of {self.divisible_by} in every dimension (the "
                    f"network's input size); got {max_spatial_size!r}."
                )
            self.max_spatial_size = size

    def _check_shape(self, x: torch.Tensor, desc: str, label: bool) -> None:
        if x.ndim != self.spatial_dims + 1:
            raise ValueError(
                f"{desc} must have shape (C, *spatial) with a channel dimension first and {self.spatial_dims} "
                f"spatial dimensions, got shape {tuple(x.shape)}; load it with "
                "LoadImaged(..., ensure_channel_first=True)."
            )
        if label and x.shape[0] != 1:
            raise ValueError(f"{desc} must be a label map with one channel, shape (1, *spatial), got {tuple(x.shape)}.")
        if not label and self.image_channels is not None and x.shape[0] != self.image_channels:
            what = f"a {self.spatial_dims + 1}D image of {x.shape[0]} volumes" if x.shape[0] > 1 else "an image"
            raise ValueError(
                f"{desc} is {what} (loaded with shape {tuple(x.shape)}), but the network takes images with "
                f"{self.image_channels} channel(s): give one {self.spatial_dims}D volume per image (e.g. extract it "
                "with nibabel, or fslroi), or set the network's in_channels."
            )

    def _check_labels(self, x: torch.Tensor, desc: str) -> None:
        if x.is_floating_point():
            bad = ~torch.isfinite(x) | (x != torch.round(x))
            if bool(bad.any()):
                values = torch.unique(x[bad]).tolist()
                raise ValueError(f"{desc} contains non-integer label values {values[:_MAX_LISTED]}.")
        if self.label_values is None:
            return
        values = torch.unique(x).to(torch.int64).cpu().numpy()
        unexpected = np.setdiff1d(values, self.label_values)
        if unexpected.size:
            shown = unexpected[:_MAX_LISTED].tolist()
            raise ValueError(
                f"{desc} contains label value(s) {shown}{' ...' if unexpected.size > _MAX_LISTED else ''} that are "
                f"not among the expected label values {self.label_values.tolist()}."
            )

    def _check_size(self, shape: tuple[int, ...], desc: str) -> None:
        if self.max_spatial_size is None or all(s <= m for s, m in zip(shape, self.max_spatial_size)):
            return
        hint = ""
        if self.divisible_by is not None:
            div = self.divisible_by
            suggested = [max(m, math.ceil(s / div) * div) for s, m in zip(shape, self.max_spatial_size)]
            hint = f", e.g. {suggested}"
        raise ValueError(
            f"{desc} has spatial shape {shape}, larger than the network's input size {self.max_spatial_size}. The "
            f"network's sizes must be multiples of {self.divisible_by or 32}, and smaller images are zero-padded by "
            f"the bundle's RegistrationInferer: set `image_size` in the config to a multiple of "
            f"{self.divisible_by or 32} at least as large as the image{hint} (the trained weights run at any such "
            "size), or register the pair with configs/register.json, which resamples it to the model's voxel size."
        )

    def _same_affine(self, reference: list[tuple[str, np.ndarray]], desc: str, value: Any) -> None:
        affine = getattr(value, "affine", None) if isinstance(value, MetaTensor) else None
        if not self.check_affines or affine is None:
            return
        a = np.asarray(affine, dtype=np.float64)
        if not reference:
            reference.append((desc, a))
            return
        ref_desc, ref = reference[0]
        if a.shape == ref.shape and np.allclose(a, ref, atol=self.affine_tolerance, rtol=0):
            return
        n = a.shape[0] - 1

        def grid(m: np.ndarray) -> str:
            codes = "".join(aff2axcodes(m)) if n == 3 else "?"
            sizes = np.linalg.norm(m[:n, :n], axis=0).round(3).tolist()
            return f"orientation {codes}, voxel size {sizes} mm, origin {m[:n, n].round(2).tolist()}"

        raise ValueError(
            f"{desc} and {ref_desc} are on different grids ({grid(a)} vs {grid(ref)}). These workflows register by "
            "voxel index, which would register a mirrored, rotated or stretched image: resample both onto one grid "
            "first, or register the pair with the bundle's configs/register.json (it resamples by the headers), or "
            "set check_affines=False if the headers are wrong and the arrays are aligned."
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        reference: tuple[str, tuple[int, ...]] | None = None
        affines: list[tuple[str, np.ndarray]] = []

        def same_shape(desc: str, shape: tuple[int, ...]) -> None:
            nonlocal reference
            if reference is None:
                reference = (desc, shape)
            elif shape != reference[1]:
                raise ValueError(
                    f"{desc} has spatial shape {shape} but {reference[0]} has spatial shape {reference[1]}; moving, "
                    "fixed and label images must have the same spatial shape (resample them to a common grid first)."
                )

        for key in self.keys:
            if key not in data:
                if self.allow_missing_keys:
                    continue
                raise ValueError(f"item has no {key!r} image; its keys are {sorted(map(str, data))}.")
            x = _as_tensor(key, data[key])
            desc = _describe(key, data[key], "image")
            self._check_shape(x, desc, label=False)
            same_shape(desc, tuple(x.shape[1:]))
            self._same_affine(affines, desc, data[key])
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
                raise ValueError(f"{desc} contains non-finite values ({n_nan} NaN, {n_inf} Inf).")
            self._check_size(tuple(x.shape[1:]), desc)
        for key in self.label_keys:
            if key not in data:
                continue
            x = _as_tensor(key, data[key])
            desc = _describe(key, data[key])
            self._check_shape(x, desc, label=True)
            same_shape(desc, tuple(x.shape[1:]))
            self._same_affine(affines, desc, data[key])
            self._check_labels(x, desc)
        return data
