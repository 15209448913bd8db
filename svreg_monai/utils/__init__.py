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
"""Shared utilities."""

from __future__ import annotations

from .io import atomic_path, atomic_write, save_nifti, write_csv, write_json
from .keys import RegistrationKeys
from .precision import MIXED_PRECISION_DTYPES, autocast, check_mixed_precision, to_float32
from .validation import (
    check_ddf,
    check_finite,
    check_flag,
    check_number,
    check_option,
    check_per_sample_value,
    check_positive_int,
    check_same_device,
    check_spatial_dims,
    check_tensor,
    check_weight_map,
)

__all__ = [
    "MIXED_PRECISION_DTYPES",
    "RegistrationKeys",
    "atomic_path",
    "atomic_write",
    "autocast",
    "check_ddf",
    "check_mixed_precision",
    "check_finite",
    "check_flag",
    "check_number",
    "check_option",
    "check_per_sample_value",
    "check_positive_int",
    "check_same_device",
    "check_spatial_dims",
    "check_tensor",
    "check_weight_map",
    "save_nifti",
    "to_float32",
    "write_csv",
    "write_json",
]
