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
"""Input validation shared by every component.

Each check raises a ``ValueError`` (or ``TypeError`` for non-tensors) whose message names the argument
and the value that was received, so that a user sees what was wrong instead of a deep traceback from
inside a convolution or ``grid_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from enum import Enum
from typing import Any

import torch
from monai.utils import look_up_option

__all__ = [
    "check_spatial_dims",
    "check_tensor",
    "check_finite",
    "check_ddf",
    "check_weight_map",
    "check_same_device",
    "check_per_sample_value",
    "check_flag",
    "check_number",
    "check_option",
    "check_positive_int",
]

SUPPORTED_SPATIAL_DIMS = (2, 3)


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def check_number(value: object, name: str) -> float:
    """Return a finite real number (a Python number or a one-element tensor) as ``float``.

    Raises:
        ValueError: for booleans, non-numbers and non-finite values, naming ``name`` and the value.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def check_option(value: object, supported: Collection[Any] | type[Enum], name: str) -> Any:
    """MONAI's :func:`~monai.utils.look_up_option` with the argument's name in the error.

    Args:
        value: the received option (a string, or a member of ``supported`` when it is an Enum/StrEnum).
        supported: the accepted options: a collection, or an Enum class (its members and their values match).
        name: the argument's name for the message.

    Returns:
        the matching option (the Enum member for an Enum class).

    Raises:
        ValueError: ``"<name> must be one of (...), got <value>."``.
    """
    try:
        return look_up_option(value, supported, print_all_options=False)
    except (ValueError, KeyError, TypeError):
        options = tuple(o.value for o in supported) if isinstance(supported, type) else tuple(supported)
        raise ValueError(f"{name} must be one of {options}, got {value!r}.") from None


def check_positive_int(value: object, name: str, allow_none: bool = False) -> int | None:
    """Return a positive integer (``bool`` excluded); None passes when ``allow_none``.

    Raises:
        ValueError: for anything else, naming ``name`` and the value.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}.")
    return int(value)


def check_flag(value: object, name: str) -> bool:
    """Return a boolean option as ``bool``, accepting the strings a command line gives.

    ``True``/``False``, ``0``/``1`` and the strings ``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case) are
    accepted: a command line such as ``python -m monai.bundle run ... --<id> true`` passes the string ``"true"``,
    and the string ``"false"`` must not count as true.

    Raises:
        ValueError: for any other value, naming ``name`` and the value.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def check_spatial_dims(spatial_dims: int, supported: Sequence[int] = SUPPORTED_SPATIAL_DIMS) -> int:
    """Validate an explicit ``spatial_dims`` argument and return it as ``int``."""
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int) or spatial_dims not in supported:
        raise ValueError(f"spatial_dims must be one of {tuple(supported)}, got {spatial_dims!r}.")
    return int(spatial_dims)


def check_tensor(x: object, name: str, ndim: int | Sequence[int] | None = None, floating: bool = True) -> torch.Tensor:
    """Check that ``x`` is a tensor with the given number of dimensions and a floating dtype.

    Args:
        x: the object to check.
        name: the argument name used in error messages.
        ndim: allowed number of tensor dimensions (including batch and channel), or None for any.
        floating: whether a floating-point dtype is required.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(str(a) for a in allowed)} dimensions (B, C, *spatial), "
                f"got shape {tuple(x.shape)}."
            )
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must have a floating-point dtype, got {x.dtype}.")
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise a ``ValueError`` if ``x`` contains NaN or Inf values.

    The check is skipped while tracing/scripting, where data-dependent Python control flow is not allowed.
    """
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return x
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {n_inf} Inf) in shape {tuple(x.shape)}.")
    return x


def check_ddf(ddf: object, name: str = "ddf", spatial_dims: int | None = None, finite: bool = True) -> torch.Tensor:
    """Validate a dense displacement (or velocity) field of shape ``(B, N, *S)`` with ``N = len(S)``.

    Args:
        ddf: the field, in voxels, channel order = array axes.
        name: the argument name used in error messages.
        spatial_dims: the expected number of spatial dimensions, or None to accept 2 or 3.
        finite: also reject NaN/Inf values.
    """
    ddf = check_tensor(ddf, name, ndim=(4, 5) if spatial_dims is None else spatial_dims + 2)
    n = ddf.ndim - 2
    if ddf.shape[1] != n:
        raise ValueError(
            f"{name} must have as many channels as spatial dimensions ({n} for a {n}D field), "
            f"got shape {tuple(ddf.shape)}."
        )
    if finite:
        check_finite(ddf, name)
    return ddf


def check_weight_map(
    weight: object, ref: torch.Tensor, name: str = "weight", ref_name: str = "ddf", finite: bool = True
) -> torch.Tensor:
    """Validate a voxel-wise weight map ``(B, 1, *S)`` (or ``(1, 1, *S)``) against a reference ``(B, C, *S)``.

    Only a singleton channel and (optionally) a singleton batch are broadcast; the spatial size must match
    exactly, so that no silent broadcasting changes the meaning of the map.
    """
    weight = check_tensor(weight, name, ndim=ref.ndim)
    if weight.shape[1] != 1 or weight.shape[2:] != ref.shape[2:] or weight.shape[0] not in (1, ref.shape[0]):
        raise ValueError(
            f"{name} must have shape (B, 1, *S) = {(ref.shape[0], 1, *ref.shape[2:])} to match {ref_name} of shape "
            f"{tuple(ref.shape)}, got {tuple(weight.shape)}."
        )
    check_same_device(**{name: weight, ref_name: ref})
    if finite:
        check_finite(weight, name)
    return weight


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise a ``ValueError`` naming the devices if the given tensors are not all on one device."""
    devices = {k: v.device for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"inputs must be on the same device, got {desc}.")


def check_per_sample_value(
    value: float | torch.Tensor,
    name: str,
    batch_size: int,
    ref: torch.Tensor,
    minimum: float | None = None,
) -> torch.Tensor:
    """Convert a float or a ``(B,)``/``(1,)`` tensor to a ``(B,)`` tensor of ``ref``'s dtype and device.

    Args:
        value: a Python number or a tensor with one value per sample (``(B,)``) or one value (``()`` or ``(1,)``).
        name: the argument name used in error messages.
        batch_size: the batch size ``B``.
        ref: a tensor whose dtype and device the result takes.
        minimum: if given, every value must be ``>= minimum``.
    """
    if isinstance(value, torch.Tensor):
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] not in (1, batch_size)):
            raise ValueError(
                f"{name} must be a float or a tensor of shape ({batch_size},) (one value per sample), "
                f"got shape {tuple(value.shape)}."
            )
        check_same_device(**{name: value, "input": ref})
        out = value.to(dtype=ref.dtype).reshape(-1).expand(batch_size)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out = torch.full((batch_size,), float(value), dtype=ref.dtype, device=ref.device)
    else:
        raise ValueError(f"{name} must be a float or a tensor of shape ({batch_size},), got {value!r}.")
    if not (torch.jit.is_scripting() or torch.jit.is_tracing()):
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"{name} must be finite, got {value!r}.")
        if minimum is not None and bool((out < minimum).any()):
            raise ValueError(
                f"{name} must be >= {minimum}, got {value if not isinstance(value, torch.Tensor) else value.tolist()}."
            )
    return out
