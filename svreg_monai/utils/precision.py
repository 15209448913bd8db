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

Convolutions need one more guard on CPU. PyTorch's oneDNN bfloat16 convolution (PyTorch 2.13; measured on an Intel Xeon
with AVX512-BF16 and no AMX, first reported on an AMD EPYC of the same kind) computes wrong weight gradients (values up
to 1e38, inf, NaN, or wrong by about 100 %) and can corrupt the heap when an output axis of the convolution is shorter
than its kernel: a 3x3x3 convolution on a map of depth 2, or a stride-2 convolution whose output has an axis of 1 or 2.
With one thread every such run is wrong; with more threads some runs are. The forward pass and the input gradient are
right. The networks' ``mixed_precision="bfloat16"`` therefore guards their convolutions
(:func:`guard_bfloat16_convolutions`; :func:`guarded_convolution` for functional calls): the flagged ones
(:func:`bfloat16_conv_needs_float32`) run in float32, which costs next to nothing because such maps are tiny.
``benchmarks/scan_bf16_conv_gradients.py`` maps the failing cases on a given CPU and checks that the rule flags all of
them. A second line of defence for training is :class:`~svreg_monai.handlers.SkipNonFiniteGradients`, which skips any
optimiser step whose gradients are not finite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "MIXED_PRECISION_DTYPES",
    "Bfloat16SafeConv1d",
    "Bfloat16SafeConv2d",
    "Bfloat16SafeConv3d",
    "Bfloat16SafeConvTranspose1d",
    "Bfloat16SafeConvTranspose2d",
    "Bfloat16SafeConvTranspose3d",
    "GUARDED_CONVOLUTIONS",
    "autocast",
    "bfloat16_conv_needs_float32",
    "check_mixed_precision",
    "guard_bfloat16_convolutions",
    "guarded_convolution",
    "to_float32",
]

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


def bfloat16_conv_needs_float32(
    spatial_shape: Sequence[int],
    kernel_size: Sequence[int] | int,
    stride: Sequence[int] | int = 1,
    padding: Sequence[int] | int = 0,
    dilation: Sequence[int] | int = 1,
    transposed: bool = False,
) -> bool:
    """Whether a CPU bfloat16 convolution must run in float32 instead, because oneDNN's weight gradient is wrong.

    PyTorch's oneDNN bfloat16 convolution on CPUs with AVX512-BF16 (``jit_bf16:avx512_core_bf16``
    ``backward_weights``, PyTorch 2.13) returns garbage weight gradients (1e13 to 1e38, inf, NaN, or wrong by 100 %)
    and sometimes corrupts the heap when an output axis of the convolution is smaller than its kernel, e.g. a 3x3x3
    convolution with padding 1 on a map of depth 2 (``benchmarks/scan_bf16_conv_gradients.py`` maps the cases: every
    failure it found has such an axis; the forward pass and the input gradient are correct). Such maps are tiny, so
    computing them in float32 costs next to nothing. For a transposed convolution, the equivalent direct
    convolution's output is the transposed convolution's input.

    Args:
        spatial_shape: spatial size of the convolution's input.
        kernel_size: kernel size per axis (or one for all).
        stride: stride per axis.
        padding: padding per axis, or ``"same"``/``"valid"``.
        dilation: dilation per axis.
        transposed: a transposed convolution.
    """
    n = len(spatial_shape)
    kernel, stride, dilation = (
        tuple(v) if isinstance(v, Sequence) else (v,) * n for v in (kernel_size, stride, dilation)
    )
    extent = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    if max(extent) <= 1:  # 1x1 convolutions are not affected
        return False
    if transposed or padding == "same":
        outputs = list(spatial_shape)
    else:
        pads = (0,) * n if padding == "valid" else tuple(padding) if isinstance(padding, Sequence) else (padding,) * n
        outputs = [(i + 2 * p - e) // s + 1 for i, p, e, s in zip(spatial_shape, pads, extent, stride)]
    return any(o < e for o, e in zip(outputs, extent))


def _cpu_bfloat16_autocast(x: torch.Tensor) -> bool:
    """Whether a convolution of ``x`` would run as a oneDNN bfloat16 convolution under the current autocast state."""
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and x.dtype in (torch.float32, torch.bfloat16)
    )


def guarded_convolution(
    conv_fn: Callable[..., torch.Tensor],
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    transposed: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """``conv_fn(input, weight, bias, **kwargs)``, in float32 where CPU bfloat16 is unsafe.

    Under CPU bfloat16 autocast, a convolution flagged by :func:`bfloat16_conv_needs_float32` runs with autocast
    disabled on float32 copies of its operands (its output is then float32); everything else runs unchanged.

    Args:
        conv_fn: ``torch.nn.functional.conv{1,2,3}d`` or ``conv_transpose{1,2,3}d``.
        input: ``(B, C_in, *S)``.
        weight: the convolution weight (its trailing axes are the kernel size).
        bias: the bias or None.
        transposed: ``conv_fn`` is a transposed convolution.
        kwargs: the keyword arguments of ``conv_fn`` (``stride``, ``padding``, ``dilation``, ``groups``, ...).
    """
    if _cpu_bfloat16_autocast(input) and bfloat16_conv_needs_float32(
        input.shape[2:],
        weight.shape[2:],
        kwargs.get("stride", 1),
        kwargs.get("padding", 0),
        kwargs.get("dilation", 1),
        transposed=transposed,
    ):
        with torch.autocast("cpu", enabled=False):
            return conv_fn(input.float(), weight.float(), None if bias is None else bias.float(), **kwargs)
    return conv_fn(input, weight, bias, **kwargs)


class _Bfloat16SafeConv:
    """Mixin of the guarded convolution modules: the module's own forward, in float32 where bfloat16 is unsafe."""

    def forward(self, input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if _cpu_bfloat16_autocast(input) and bfloat16_conv_needs_float32(
            input.shape[2:],
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            transposed=self.transposed,
        ):
            with torch.autocast("cpu", enabled=False):
                return super().forward(input.float(), *args, **kwargs)
        return super().forward(input, *args, **kwargs)


class Bfloat16SafeConv1d(_Bfloat16SafeConv, nn.Conv1d):
    """``nn.Conv1d`` guarded by :func:`bfloat16_conv_needs_float32` (see :func:`guard_bfloat16_convolutions`)."""


class Bfloat16SafeConv2d(_Bfloat16SafeConv, nn.Conv2d):
    """``nn.Conv2d`` guarded by :func:`bfloat16_conv_needs_float32` (see :func:`guard_bfloat16_convolutions`)."""


class Bfloat16SafeConv3d(_Bfloat16SafeConv, nn.Conv3d):
    """``nn.Conv3d`` guarded by :func:`bfloat16_conv_needs_float32` (see :func:`guard_bfloat16_convolutions`)."""


class Bfloat16SafeConvTranspose1d(_Bfloat16SafeConv, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` guarded by :func:`bfloat16_conv_needs_float32`."""


class Bfloat16SafeConvTranspose2d(_Bfloat16SafeConv, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` guarded by :func:`bfloat16_conv_needs_float32`."""


class Bfloat16SafeConvTranspose3d(_Bfloat16SafeConv, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` guarded by :func:`bfloat16_conv_needs_float32`."""


GUARDED_CONVOLUTIONS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: Bfloat16SafeConv1d,
    nn.Conv2d: Bfloat16SafeConv2d,
    nn.Conv3d: Bfloat16SafeConv3d,
    nn.ConvTranspose1d: Bfloat16SafeConvTranspose1d,
    nn.ConvTranspose2d: Bfloat16SafeConvTranspose2d,
    nn.ConvTranspose3d: Bfloat16SafeConvTranspose3d,
}
"""The convolution classes :func:`guard_bfloat16_convolutions` replaces, and their guarded subclasses."""


def guard_bfloat16_convolutions(module: nn.Module) -> nn.Module:
    """Make every convolution of ``module`` safe under CPU bfloat16 autocast, in place.

    Each ``nn.Conv{1,2,3}d`` and ``nn.ConvTranspose{1,2,3}d`` (exactly these classes) becomes the matching
    ``Bfloat16SafeConv*`` subclass, which runs its forward in float32 when :func:`bfloat16_conv_needs_float32` flags
    the input's shape under CPU bfloat16 autocast, and as before otherwise. The class is changed in place (as
    ``torch.nn.utils.parametrize`` does), so parameters, buffers, state-dict keys and hooks stay as they are. The
    decision depends on the input's shape only, so gradient-checkpoint recomputation makes the same one. Networks
    with ``mixed_precision="bfloat16"`` call this themselves; call it on your own model before running it under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``. The guard is for float32 parameters under autocast: a model
    converted to bfloat16 (``model.bfloat16()``) is not covered.

    Args:
        module: any module.

    Returns:
        ``module``.
    """
    for m in module.modules():
        guarded = GUARDED_CONVOLUTIONS.get(type(m))
        if guarded is not None:
            m.__class__ = guarded
    return module
