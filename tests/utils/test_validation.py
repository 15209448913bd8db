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

import re

import pytest
import torch

from svreg_monai.utils import (
    check_ddf,
    check_finite,
    check_flag,
    check_per_sample_value,
    check_spatial_dims,
    check_tensor,
    check_weight_map,
)


@pytest.mark.parametrize("value", [1, 4, "3", 3.0, True, None])
def test_spatial_dims_rejected_with_value(value):
    with pytest.raises(ValueError, match=repr(value).replace("(", r"\(")):
        check_spatial_dims(value)


def test_spatial_dims_accepts_2_and_3():
    assert check_spatial_dims(2) == 2 and check_spatial_dims(3) == 3


def test_check_tensor_and_ddf_messages_name_the_shape():
    with pytest.raises(TypeError, match="list"):
        check_tensor([1.0], "x")
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        check_tensor(torch.zeros(2, 3), "x", ndim=(4, 5))
    with pytest.raises(ValueError, match=r"\(1, 2, 4, 4, 4\)"):
        check_ddf(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="1 NaN, 1 Inf"):
        check_finite(torch.tensor([0.0, float("nan"), float("inf")]), "x")
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\)"):
        check_weight_map(torch.zeros(2, 1, 4, 5), torch.zeros(2, 2, 4, 4))


def test_per_sample_value_broadcasts_and_checks():
    ref = torch.zeros(3, 1, dtype=torch.float64)
    out = check_per_sample_value(2.0, "a", 3, ref)
    assert out.dtype == torch.float64 and out.tolist() == [2.0, 2.0, 2.0]
    assert check_per_sample_value(torch.tensor([1.0]), "a", 3, ref).shape == (3,)
    with pytest.raises(ValueError, match="shape"):
        check_per_sample_value(torch.ones(2), "a", 3, ref)
    with pytest.raises(ValueError, match=">= 1.0"):
        check_per_sample_value(0.5, "a", 3, ref, minimum=1.0)
    with pytest.raises(ValueError, match="finite"):
        check_per_sample_value(float("nan"), "a", 3, ref)


@pytest.mark.parametrize(
    "value,expected",
    [(True, True), (False, False), (1, True), (0, False), ("true", True), ("False", False), (" yes ", True),
     ("off", False), ("1", True), ("0", False)],
)  # fmt: skip
def test_check_flag_accepts_bools_and_command_line_strings(value, expected):
    assert check_flag(value, "flag") is expected


@pytest.mark.parametrize("value", ["maybe", 2, None, 0.5, [True]])
def test_check_flag_rejects_other_values_naming_them(value):
    with pytest.raises(ValueError, match=rf"hyper#extrapolate must be true or false, got {re.escape(repr(value))}"):
        check_flag(value, "hyper#extrapolate")
