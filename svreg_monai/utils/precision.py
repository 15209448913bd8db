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
"""Mixed precision: which parts of a registration model may run in 16-bit floats, and which must not.

Convolutions and attention tolerate bfloat16/float16 (``torch.autocast``); displacement arithmetic does not. A
bfloat16 number has 8 significant bits, so a displacement of 50 voxels would be stored to within 0.25 voxel and
every scaling-and-squaring step would add that error. Warps, velocity integration and the weight activation
therefore cast 16-bit inputs up with :func:`to_float32`. Nothing more is needed, whether the caller enabled autocast
(MONAI engines with ``amp=True``) or a network did (``mixed_precision=...``): the operations they use (grid
sampling, interpolation, elementwise arithmetic, sigmoid/softplus) are not in autocast's lower-precision lists, so
on float32 inputs they compute in float32 under autocast too (a test checks this for the CPU).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ["MIXED_PRECISION_DTYPES", "check_mixed_precision", "autocast", "to_float32"]

MIXED_PRECISION_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
"""Accepted ``mixed_precision`` values (also as ``torch.dtype``)."""

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_mixed_precision(value: str | torch.dtype | None) -> torch.dtype | None:
    """Validate a ``mixed_precision`` argument.

    Args:
        value: None (full precision), ``"bfloat16"``, ``"float16"`` or the matching ``torch.dtype``.

    Returns:
        the autocast dtype, or None.

    Raises:
        ValueError: for any other value, naming it.
    """
    if value is None:
        return None
    if isinstance(value, torch.dtype) and value in _LOW_PRECISION:
        return value
    if isinstance(value, str) and value in MIXED_PRECISION_DTYPES:
        return MIXED_PRECISION_DTYPES[value]
    raise ValueError(f"mixed_precision must be None, 'bfloat16' or 'float16', got {value!r}.")


def autocast(device_type: str, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast(device_type, dtype)``, or a no-op context for ``dtype=None`` (nothing is recorded by tracing).

    Args:
        device_type: ``tensor.device.type`` of the inputs (``"cpu"``, ``"cuda"``, ...).
        dtype: the 16-bit dtype, or None for full precision.
    """
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def to_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Cast a float16/bfloat16 tensor to float32; other dtypes (float32, float64, integers) are returned as is.

    Args:
        tensor: any tensor.
    """
    return tensor.float() if tensor.dtype in _LOW_PRECISION else tensor
