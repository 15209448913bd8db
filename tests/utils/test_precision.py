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

import pytest
import torch
import torch.nn.functional as F

from svreg_monai.utils import autocast, check_mixed_precision, to_float32


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16),
    ],
)
def test_check_mixed_precision_accepts(value, expected):
    assert check_mixed_precision(value) is expected


@pytest.mark.parametrize("value", ["fp16", "float32", torch.float32, torch.float64, True, 16, ""])
def test_check_mixed_precision_rejects_with_value(value):
    with pytest.raises(ValueError, match="mixed_precision must be None, 'bfloat16' or 'float16', got"):
        check_mixed_precision(value)


def test_autocast():
    a, b = torch.rand(4, 4), torch.rand(4, 4)
    with autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.float32
    with autocast("cpu", torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_float32_operations_stay_float32_under_autocast():
    # the assumption behind casting up being enough (svreg_monai.utils.precision): the operations of warps,
    # integration and the weight activation are not lowered by autocast when their inputs are float32
    x, grid = torch.rand(1, 2, 4, 5, 6), torch.rand(1, 4, 5, 6, 3) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = [
            F.grid_sample(x, grid, align_corners=True),
            F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False),
            torch.sigmoid(x),
            F.softplus(x),
            x + x * 0.5,
        ]
    assert all(o.dtype == torch.float32 for o in outputs)


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.int64, torch.int64),
    ],
)
def test_to_float32(dtype, expected):
    x = torch.ones(3, dtype=dtype)
    assert to_float32(x).dtype == expected
    if dtype == expected:
        assert to_float32(x) is x
