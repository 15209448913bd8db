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
"""Integration of velocity fields into diffeomorphic displacement fields.

- Stationary velocity fields (SVF) by scaling and squaring, with MONAI ``DVF2DDF`` semantics: the velocity is
  divided by ``2**num_steps`` and the field is composed with itself ``num_steps`` times through MONAI ``Warp``.
- Time-varying velocity fields (TVF) as a sequence of steps ``v_1 .. v_T``, accumulated either with the rule of the
  TransMorph-TVF reference implementation, ``u_t = u_{t-1} + warp(v_t, v_t)``, or by true composition
  ``u_t = v_t + warp(u_{t-1}, v_t)`` (warp by ``u_{t-1}`` first, then by ``v_t``), optionally followed by scaling
  and squaring of the accumulated field as the reference does.

All fields are ``(B, N, *S)`` in voxels, channel order = array axes. Integration always runs in float32: 16-bit
velocities (from a network under ``torch.autocast``) are cast up (see :mod:`svreg_monai.utils.precision`); float64
stays float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Warp

from svreg_monai.flow.warping import RegistrationWarp, compose_ddf
from svreg_monai.utils.precision import to_float32
from svreg_monai.utils.validation import check_ddf, check_option

__all__ = ["scaling_and_squaring", "tvf_step", "integrate_tvf", "VelocityFieldIntegrator", "TVF_RULES"]

TVF_RULES = ("reference", "composition")


def _check_steps(num_steps: int, minimum: int) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < minimum:
        raise ValueError(f"num_steps must be an integer >= {minimum}, got {num_steps!r}.")
    return num_steps


def scaling_and_squaring(velocity: torch.Tensor, num_steps: int = 7, warp: Warp | None = None) -> torch.Tensor:
    """Exponentiate a stationary velocity field by scaling and squaring.

    ``u_0 = v / 2**K``, ``u_{k+1} = u_k + warp(u_k, u_k)``; for ``K = 0`` the velocity is returned as is.
    Equal to MONAI ``DVF2DDF(num_steps)`` with the same warp settings.

    Args:
        velocity: ``(B, N, *S)`` velocity in voxels per unit time.
        num_steps: number of squaring steps ``K >= 0``.
        warp: warp layer (default: linear interpolation, zero padding, as ``DVF2DDF`` and the reference).

    Returns:
        ``(B, N, *S)`` displacement in voxels.
    """
    check_ddf(velocity, "velocity")
    _check_steps(num_steps, 0)
    layer = warp if warp is not None else RegistrationWarp()
    ddf = to_float32(velocity) / (2**num_steps)
    for _ in range(num_steps):
        ddf = ddf + layer(ddf, ddf)
    return ddf


def tvf_step(
    ddf: torch.Tensor | None, velocity: torch.Tensor, rule: str = "reference", warp: Warp | None = None
) -> torch.Tensor:
    """Accumulate one time-varying velocity step into the displacement so far.

    Networks that interleave prediction and integration (TransMorph-TVF predicts ``v_t`` from the image warped by
    ``u_{t-1}``) call this once per step.

    Args:
        ddf: ``(B, N, *S)`` displacement after the previous steps, or None before the first step (= zero).
        velocity: ``(B, N, *S)`` step ``v_t`` in voxels.
        rule: ``"reference"``: ``u_t = u_{t-1} + warp(v_t, v_t)`` (TransMorph-TVF);
            ``"composition"``: ``u_t = v_t + warp(u_{t-1}, v_t)``, i.e. warping by ``u_t`` equals warping by
            ``u_{t-1}`` and then by ``v_t``.
        warp: warp layer (default: linear, zero padding).

    Returns:
        ``(B, N, *S)`` accumulated displacement ``u_t``.
    """
    check_option(rule, TVF_RULES, "tvf_rule")
    check_ddf(velocity, "velocity")
    layer = warp if warp is not None else RegistrationWarp()
    velocity = to_float32(velocity)
    ddf = None if ddf is None else to_float32(ddf)
    if rule == "reference":
        increment = layer(velocity, velocity)
        return increment if ddf is None else ddf + increment
    if ddf is None:
        return velocity
    return compose_ddf(ddf, velocity, warp=layer)


def integrate_tvf(
    velocities: Sequence[torch.Tensor], rule: str = "reference", num_steps: int = 0, warp: Warp | None = None
) -> torch.Tensor:
    """Integrate a sequence of velocity steps with :func:`tvf_step`, then (if ``num_steps > 0``) exponentiate the
    accumulated field by scaling and squaring, as the TransMorph-TVF reference does with ``SVF=True``.

    Args:
        velocities: ``T >= 1`` tensors of shape ``(B, N, *S)``.
        rule: accumulation rule, see :func:`tvf_step`.
        num_steps: scaling-and-squaring steps applied to the accumulated field (0 = none).
        warp: warp layer (default: linear, zero padding).

    Returns:
        ``(B, N, *S)`` displacement in voxels.
    """
    if isinstance(velocities, torch.Tensor) or len(velocities) == 0:
        raise ValueError(
            "velocities must be a non-empty sequence of (B, N, *S) tensors, got "
            f"{type(velocities).__name__ if isinstance(velocities, torch.Tensor) else 'an empty sequence'}."
        )
    _check_steps(num_steps, 0)
    shape = velocities[0].shape
    layer = warp if warp is not None else RegistrationWarp()
    ddf: torch.Tensor | None = None
    for t, v in enumerate(velocities):
        if v.shape != shape:
            raise ValueError(f"velocities[{t}] has shape {tuple(v.shape)}, expected {tuple(shape)} like velocities[0].")
        ddf = tvf_step(ddf, v, rule=rule, warp=layer)
    assert ddf is not None
    return scaling_and_squaring(ddf, num_steps, warp=layer) if num_steps > 0 else ddf


class VelocityFieldIntegrator(nn.Module):
    """Integrate stationary or time-varying velocity fields into a diffeomorphic displacement.

    Args:
        mode: ``"svf"`` (``forward`` takes one velocity tensor) or ``"tvf"`` (``forward`` takes a sequence of
            velocity steps).
        num_steps: scaling-and-squaring steps. In ``"svf"`` mode at least 1 (MONAI ``DVF2DDF`` default 7); in
            ``"tvf"`` mode applied to the accumulated field, 0 to skip (the TransMorph-TVF-SPR reference uses 7).
        tvf_rule: ``"reference"`` or ``"composition"``, see :func:`tvf_step`.
        interp_mode: interpolation of the internal warps, ``"bilinear"`` (linear in 3D too) or ``"bicubic"``.
        padding_mode: padding of the internal warps, ``"zeros"`` (``DVF2DDF`` and the reference), ``"border"`` or
            ``"reflection"``.

    Example::

        integrator = VelocityFieldIntegrator("svf", num_steps=7)
        ddf = integrator(velocity)  # (B, 3, H, W, D) -> (B, 3, H, W, D)
        inv = integrator.inverse(velocity)  # displacement of the inverse transform
    """

    def __init__(
        self,
        mode: str = "svf",
        num_steps: int = 7,
        tvf_rule: str = "reference",
        interp_mode: str = "bilinear",
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if mode not in ("svf", "tvf"):
            raise ValueError(f"mode must be 'svf' or 'tvf', got {mode!r}.")
        if interp_mode not in ("bilinear", "bicubic"):
            raise ValueError(f"interp_mode must be 'bilinear' or 'bicubic', got {interp_mode!r}.")
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(f"padding_mode must be 'zeros', 'border' or 'reflection', got {padding_mode!r}.")
        self.mode = mode
        self.num_steps = _check_steps(num_steps, 1 if mode == "svf" else 0)
        self.tvf_rule = check_option(tvf_rule, TVF_RULES, "tvf_rule")
        self.warp = RegistrationWarp(mode=interp_mode, padding_mode=padding_mode)

    def step(self, ddf: torch.Tensor | None, velocity: torch.Tensor) -> torch.Tensor:
        """One TVF accumulation step with this integrator's rule and warp (see :func:`tvf_step`)."""
        return tvf_step(ddf, velocity, rule=self.tvf_rule, warp=self.warp)

    def exponentiate(self, velocity: torch.Tensor) -> torch.Tensor:
        """Scaling and squaring of one stationary field with this integrator's settings."""
        return scaling_and_squaring(velocity, self.num_steps, warp=self.warp)

    def forward(self, velocity: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            velocity: ``"svf"``: a ``(B, N, *S)`` tensor; ``"tvf"``: a sequence of such tensors.

        Returns:
            ``(B, N, *S)`` displacement in voxels.
        """
        if self.mode == "svf":
            if not isinstance(velocity, torch.Tensor):
                raise ValueError(f"mode 'svf' takes one (B, N, *S) tensor, got {type(velocity).__name__}.")
            return self.exponentiate(velocity)
        return integrate_tvf(velocity, rule=self.tvf_rule, num_steps=self.num_steps, warp=self.warp)  # type: ignore

    def inverse(self, velocity: torch.Tensor) -> torch.Tensor:
        """Displacement of the inverse transform of an SVF, ``exp(-v)``.

        Raises:
            ValueError: in ``"tvf"`` mode, whose inverse is not the exponential of a negated field.
        """
        if self.mode != "svf":
            raise ValueError("inverse is defined for mode 'svf' (exp(-v)); got mode 'tvf'.")
        return self.exponentiate(-velocity)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, num_steps={self.num_steps}, tvf_rule={self.tvf_rule!r}"
