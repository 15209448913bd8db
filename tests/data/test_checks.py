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

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from svreg_monai.data import CheckRegistrationPaird
from svreg_monai.utils import RegistrationKeys as K

SHAPE = (8, 10, 12)


def tensor(name: str | None, shape=(1, *SHAPE), label: bool = False) -> torch.Tensor:
    data = torch.randint(0, 4, shape, dtype=torch.int16) if label else torch.rand(shape)
    return data if name is None else MetaTensor(data, meta={"filename_or_obj": name})


def item(**overrides) -> dict:
    d = {
        K.MOVING: tensor("atlas.nii.gz"),
        K.FIXED: tensor("sub-003.nii.gz"),
        K.MOVING_LABEL: tensor("atlas_seg.nii.gz", label=True),
        K.FIXED_LABEL: tensor("sub-003_seg.nii.gz", label=True),
    }
    d.update(overrides)
    return {k: v for k, v in d.items() if v is not None}


def test_valid_items_pass_unchanged():
    check = CheckRegistrationPaird(label_values=(1, 2, 3), max_spatial_size=32)
    for d in (
        item(),
        item(moving_label=None, fixed_label=None),
        item(fixed=tensor(None)),
        item(fixed=np.zeros((1, *SHAPE))),
    ):
        assert check(d) is d
    check2d = CheckRegistrationPaird(spatial_dims=2, label_keys=(), image_channels=None)
    d2 = {K.MOVING: tensor("a.png", (1, 6, 7)), K.FIXED: tensor("b.png", (3, 6, 7))}
    assert check2d(d2) is d2


def _nan():
    x = tensor("sub-003.nii.gz")
    x[0, 1, 1, 1] = float("nan")
    return x


def _float_labels():
    x = tensor("sub-003_seg.nii.gz", label=True).float()
    x[0, 0, 0, 0] = 1.5
    return x


@pytest.mark.parametrize(
    "overrides, kwargs, pattern",
    [
        ({K.FIXED: _nan()}, {}, r"fixed image 'sub-003\.nii\.gz' contains non-finite values \(1 NaN, 0 Inf\)"),
        (
            {K.FIXED: tensor("sub-003.nii.gz", (1, 8, 10, 13))},
            {},
            r"fixed image 'sub-003\.nii\.gz' has spatial shape \(8, 10, 13\) but moving image 'atlas\.nii\.gz' has "
            r"spatial shape \(8, 10, 12\)",
        ),
        (
            {K.FIXED_LABEL: tensor("sub-003_seg.nii.gz", (1, 8, 10, 11), label=True)},
            {},
            r"fixed_label 'sub-003_seg\.nii\.gz' has spatial shape \(8, 10, 11\) but moving image 'atlas\.nii\.gz'",
        ),
        (
            {K.FIXED: tensor("sub-003.nii.gz", SHAPE)},
            {},
            r"fixed image 'sub-003\.nii\.gz' must have shape \(C, \*spatial",
        ),
        (
            {K.MOVING_LABEL: tensor("atlas_seg.nii.gz", (2, *SHAPE), label=True)},
            {},
            r"moving_label 'atlas_seg\.nii\.gz' must be a label map with one channel",
        ),
        (
            {K.FIXED_LABEL: MetaTensor(torch.full((1, *SHAPE), 7), meta={"filename_or_obj": "sub-003_seg.nii.gz"})},
            {"label_values": (1, 2, 3)},
            r"fixed_label 'sub-003_seg\.nii\.gz' contains label value\(s\) \[7\].*\[0, 1, 2, 3\]",
        ),
        (
            {},
            {"label_values": (1, 2, 3), "allow_background": False},
            r"moving_label 'atlas_seg\.nii\.gz' contains label value\(s\) \[0\]",
        ),
        ({K.FIXED_LABEL: _float_labels()}, {}, r"fixed_label 'sub-003_seg\.nii\.gz' contains non-integer.*1\.5"),
        ({K.FIXED: None}, {}, r"item has no 'fixed' image"),
        (
            {K.FIXED: tensor("sub-003_4d.nii.gz", (2, *SHAPE))},
            {},
            r"fixed image 'sub-003_4d\.nii\.gz' is a 4D image of 2 volumes \(loaded with shape \(2, 8, 10, 12\)\).*1 "
            r"channel\(s\): give one 3D volume per image",
        ),
        ({K.FIXED: "sub-003.nii.gz"}, {}, r"fixed must be a loaded array.*'sub-003\.nii\.gz'.*LoadImaged"),
        (
            {},
            {"max_spatial_size": (32, 32, 96), "divisible_by": None},
            r"moving image 'atlas\.nii\.gz' has spatial shape \(8, 10, 12\), larger than .* \(32, 32, 96\)",
        ),
    ],
)
def test_errors_name_the_file(overrides, kwargs, pattern):
    if "max_spatial_size" in kwargs:  # make the images larger than the limit in the first dimension only
        big = (1, 40, 10, 12)
        overrides = {
            K.MOVING: tensor("atlas.nii.gz", big),
            K.FIXED: tensor("sub-003.nii.gz", big),
            K.MOVING_LABEL: None,
            K.FIXED_LABEL: None,
        }
        pattern = pattern.replace(r"\(8, 10, 12\)", r"\(40, 10, 12\)")
    with pytest.raises(ValueError, match=pattern):
        CheckRegistrationPaird(**kwargs)(item(**overrides))


def test_too_large_message_suggests_image_size():
    big = (1, 100, 64, 20)
    d = {K.MOVING: tensor("atlas.nii.gz", big), K.FIXED: tensor("sub-001.nii.gz", big)}
    with pytest.raises(
        ValueError, match=r"multiples of 32.*RegistrationInferer.*`image_size`.*multiple of 32.*e\.g\. \[128, 64, 64\]"
    ):
        CheckRegistrationPaird(max_spatial_size=(96, 64, 64))(d)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"max_spatial_size": (96, 100, 64)}, r"multiple of 32.*\(96, 100, 64\)"),
        ({"max_spatial_size": (96, 96)}, "3 positive ints"),
        ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
        ({"divisible_by": 0}, "divisible_by must be a positive integer"),
        ({"image_channels": 0}, "image_channels must be a positive integer or None, got 0"),
    ],
)
def test_constructor_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        CheckRegistrationPaird(**kwargs)


def test_missing_images_allowed_when_requested():
    d = {K.FIXED: tensor("sub.nii.gz")}
    assert CheckRegistrationPaird(allow_missing_keys=True)(d) is d


def _on_grid(affine: np.ndarray, name: str, label: bool = False) -> MetaTensor:
    x = torch.randint(0, 3, (1, 8, 8, 8)).float() if label else torch.rand(1, 8, 8, 8)
    return MetaTensor(x, affine=torch.as_tensor(affine), meta={"filename_or_obj": name})


def test_images_on_different_grids_are_named():
    """A LAS copy of a RAS image (same shape) would be registered as a mirror image: it is an error."""
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    las = ras.copy()
    las[0, 0], las[0, 3] = -2.0, 14.0
    item = {K.MOVING: _on_grid(las, "m_las.nii.gz"), K.FIXED: _on_grid(ras, "f.nii.gz")}
    with pytest.raises(ValueError, match=r"different grids") as info:
        CheckRegistrationPaird()(item)
    for part in ("'m_las.nii.gz'", "'f.nii.gz'", "orientation LAS", "orientation RAS", "configs/register.json"):
        assert part in str(info.value)
    assert CheckRegistrationPaird(check_affines=False)(item) is item
    # a label on another voxel size than its image
    item = {
        K.MOVING: _on_grid(ras, "m.nii.gz"),
        K.FIXED: _on_grid(ras, "f.nii.gz"),
        K.MOVING_LABEL: _on_grid(np.diag([1.0, 1.0, 1.0, 1.0]), "m_seg.nii.gz", label=True),
    }
    with pytest.raises(ValueError, match=r"m_seg.nii.gz.*different grids.*voxel size \[1.0, 1.0, 1.0\]"):
        CheckRegistrationPaird()(item)
    item[K.MOVING_LABEL] = _on_grid(
        ras + 1e-5 * np.triu(np.ones((4, 4)), 1) * (np.arange(4) < 3)[:, None], "ok.nii.gz", True
    )
    assert CheckRegistrationPaird()(item) is item  # within the tolerance
