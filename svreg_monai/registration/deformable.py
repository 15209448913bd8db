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
"""Instance optimisation with spatially varying regularisation (SPR) for one pair, no training needed.

The unknowns are a stationary velocity field ``v`` and the logits ``l`` of the regularisation weight, both on the
grid of the current level; the displacement is ``u = exp(v)`` (scaling and squaring) and the weight
``λ = act(l)`` (the activation of the prior: sigmoid for Beta(α, 1), softplus for the Gaussian prior). Each level
minimises the training objective of the method for this one pair::

    LNCC(moving ∘ (id + u), fixed) + λ_max · mean_x[λ(x) |∇u(x)|²] − mean_x[log p(λ(x))]

with Adam, coarse to fine (``levels`` are average-pooling factors of the input grid); the fields are resized
between levels. Start from identity (``v = 0``, ``λ = initial_weight``) or from a network's prediction (its
velocity and λ). Without the prior the optimum is λ → 0; with it, a voxel's optimum is about
``λ* = (α − 1) / (λ_max |∇u|²)`` (Beta), so λ drops where the deformation must bend and stays near 1 elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from svreg_monai.flow.integration import scaling_and_squaring
from svreg_monai.flow.resize import resize_ddf
from svreg_monai.flow.warping import RegistrationWarp
from svreg_monai.losses.functional_similarity import local_normalized_cross_correlation_loss
from svreg_monai.losses.regularization import SpatiallyVaryingRegularizationLoss
from svreg_monai.priors import WeightPrior, get_prior
from svreg_monai.utils.validation import check_positive_int, check_tensor

__all__ = ["InstanceOptimizationResult", "optimize_spr", "summarize_history", "weight_logits"]


class InstanceOptimizationResult(NamedTuple):
    """Result of :func:`optimize_spr`, on the input grid.

    Attributes:
        ddf: ``(1, N, *S)`` displacement ``exp(v)`` in voxels (pull-back: ``warp(moving, ddf) ~ fixed``).
        inverse_ddf: ``(1, N, *S)`` displacement of the inverse, ``exp(-v)``.
        weight: ``(1, 1, *S)`` regularisation weight λ(x).
        velocity: ``(1, N, *S_l)`` the optimised velocity on the finest level's grid, in that grid's voxels.
        history: one entry per step: level, step, loss and its terms (similarity, diffusion, prior).
    """

    ddf: torch.Tensor
    inverse_ddf: torch.Tensor
    weight: torch.Tensor
    velocity: torch.Tensor
    history: list[dict[str, float]]


def weight_logits(weight: torch.Tensor, prior: str | WeightPrior = "beta", eps: float = 1e-4) -> torch.Tensor:
    """The logits whose activation is ``weight`` (the prior's :meth:`~svreg_monai.priors.WeightPrior.logits`, the
    inverse of the weight head's activation), for a warm start."""
    return get_prior(prior).logits(weight, eps)


def _pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return x
    pool = F.avg_pool3d if x.ndim == 5 else F.avg_pool2d
    return pool(x, factor, factor, ceil_mode=True, count_include_pad=False)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "trilinear" if x.ndim == 5 else "bilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def _check_levels(levels: Sequence[int], steps: Sequence[int]) -> tuple[list[int], list[int]]:
    levels = [int(f) for f in levels]
    steps = [int(s) for s in steps]
    if not levels or len(levels) != len(steps):
        raise ValueError(f"levels {levels} and steps {steps} must be non-empty and of equal length.")
    if min(levels) < 1 or any(a < b for a, b in zip(levels, levels[1:])):
        raise ValueError(f"levels must be pooling factors >= 1, coarse to fine (non-increasing), got {levels}.")
    if min(steps) < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    return levels, steps


def _converged(losses: Sequence[float], tolerance: float, patience: int) -> bool:
    """Whether the mean relative decrease per step over the last ``patience`` steps is below ``tolerance``."""
    if len(losses) <= patience:
        return False
    before, now = losses[-1 - patience], losses[-1]
    return (before - now) < tolerance * patience * max(abs(before), 1e-12)


def optimize_spr(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    levels: Sequence[int] = (2, 1),
    steps: Sequence[int] = (40, 20),
    learning_rate: float = 0.05,
    lambda_max: float = 5.0,
    prior: str | WeightPrior = "beta",
    prior_param: float = 1.01,
    kernel_size: int = 5,
    integration_steps: int = 7,
    initial_velocity: torch.Tensor | None = None,
    initial_weight: torch.Tensor | float = 0.5,
    learn_weight: bool = True,
    field_scale: int = 2,
    tolerance: float = 0.0,
    patience: int = 10,
    progress: bool = False,
) -> InstanceOptimizationResult:
    """Register one pair by optimising a velocity field and a regularisation-weight field (SPR objective).

    The defaults are the ones measured on real 2 mm brain pairs (``benchmarks/bench_instance_optimisation.py``):
    levels (2, 1), steps (40, 20), learning rate 0.05, fields at half resolution, λ_max 5 and α 1.01 (λ then varies
    inside the brain instead of sitting at 1). The step budget is where the deformation's roughness (SDlogJ)
    matches ANTs SyN-CC's: more steps keep raising the Dice with rougher fields and some folding (80 + 40 steps:
    NDV 0.04 % on the real subject), fewer steps still pass SyN 100x70x50 (10 + 5 steps, in 6 to 8 s).
    Bfloat16 autocast changes nothing here (no operation of this objective is autocast-eligible on the CPU), and
    fine-tuning the network's weights for the same time gained at most 1 Dice point where this gained 8 to 13
    (both measured in that benchmark).

    Args:
        moving: ``(1, C, *S)`` moving image, intensities normalised (e.g. [0, 1]).
        fixed: ``(1, C, *S)`` fixed image on the same grid (e.g. the pipeline's working grid).
        levels: average-pooling factor of each level, coarse to fine (``(2, 1)``: half then full resolution).
        steps: Adam steps per level.
        learning_rate: Adam's learning rate (velocity in voxels of the level's grid, logits unitless).
        lambda_max: weight of the weighted diffusion term.
        prior: ``"beta"`` (λ in (0, 1], parameter α ≥ 1) or ``"gaussian"`` (parameter 1/σ²).
        prior_param: α (Beta) or 1/σ² (Gaussian).
        kernel_size: LNCC window (voxels of each level).
        integration_steps: scaling-and-squaring steps.
        initial_velocity: ``(1, N, *S')`` start velocity on any grid, in voxels of that grid (a network's
            ``RegistrationOutput.velocity``); None starts from identity.
        initial_weight: start λ: a float (uniform) or a ``(1, 1, *S'')`` map (a network's λ).
        learn_weight: optimise λ (True, the SPR method) or keep it fixed at ``initial_weight`` (uniform
            regularisation when that is a float: the ablation).
        field_scale: the velocity and λ live on each level's grid pooled by this factor (2: half resolution, as
            TM-SPR's velocity), and are upsampled to the level's grid for the warp and the objective: fewer
            unknowns, smoother fields and cheaper integration; 1 keeps them on the level's grid.
        tolerance: stopping rule: a level ends early once the loss has fallen by less than ``tolerance`` (relative
            to its magnitude) per step on average over the last ``patience`` steps; ``steps`` are then the most
            each level may take. 0 (the default) runs every step: on real brain pairs the rule bought nothing per
            second over fixed budgets (``benchmarks/results/instance_optimisation.md``: with tolerance 1e-3 it
            stopped after 58 to 113 steps, at a Dice on or below the line between the fixed budgets' (time, Dice)
            points).
        patience: the window of the stopping rule, in steps.
        progress: show a progress bar (tqdm) over all steps.

    Returns:
        :class:`InstanceOptimizationResult` on the input grid.

    Raises:
        ValueError: for images of different shapes or non-finite values, bad levels or steps, a non-positive
            learning rate, a negative ``lambda_max``, a negative tolerance, a patience below 1, or a prior parameter
            out of range.
    """
    moving = check_tensor(moving, "moving", ndim=(4, 5))
    fixed = check_tensor(fixed, "fixed", ndim=(4, 5))
    if moving.shape != fixed.shape or moving.shape[0] != 1:
        raise ValueError(
            f"moving and fixed must have the same shape (1, C, *S), got {tuple(moving.shape)} and {tuple(fixed.shape)}."
        )
    if not (torch.isfinite(moving).all() and torch.isfinite(fixed).all()):
        raise ValueError("moving and fixed must hold finite values.")
    levels, steps = _check_levels(levels, steps)
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}.")
    check_positive_int(field_scale, "field_scale")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}.")
    check_positive_int(patience, "patience")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}.")
    weight_prior = get_prior(prior)
    regulariser = SpatiallyVaryingRegularizationLoss(prior=weight_prior, lambda_max=lambda_max, prior_param=prior_param)
    n = moving.ndim - 2
    size = tuple(moving.shape[2:])
    warp = RegistrationWarp()  # warps images on the level's grid
    integrate = RegistrationWarp()  # warps inside scaling and squaring, on the fields' grid (its own cached grid)
    history: list[dict[str, float]] = []
    bar = None
    if progress:
        from monai.utils import optional_import

        tqdm, has_tqdm = optional_import("tqdm", name="tqdm")
        bar = tqdm(total=sum(steps), desc="SPR optimisation", unit="step") if has_tqdm else None

    velocity: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    for level, (factor, count) in enumerate(zip(levels, steps)):
        m, f = _pool(moving, factor), _pool(fixed, factor)
        image_grid = tuple(m.shape[2:])
        grid = tuple(-(-s // field_scale) for s in image_grid)  # the fields' grid
        if velocity is None:
            if initial_velocity is None:
                start_v = torch.zeros(1, n, *grid, dtype=m.dtype, device=m.device)
            else:
                start_v = resize_ddf(initial_velocity.detach().to(m.device, m.dtype), size=grid)
            if isinstance(initial_weight, torch.Tensor):
                start_w = _resize(initial_weight.detach().to(m.device, m.dtype), grid)
            else:
                start_w = torch.full((1, 1, *grid), float(initial_weight), dtype=m.dtype, device=m.device)
            start_l = weight_prior.logits(start_w)
        else:
            assert logits is not None
            start_v = resize_ddf(velocity.detach(), size=grid)
            start_l = _resize(logits.detach(), grid)
        velocity = start_v.clone().requires_grad_(True)
        logits = start_l.clone().requires_grad_(learn_weight)
        params = [velocity] + ([logits] if learn_weight else [])
        optimiser = torch.optim.Adam(params, lr=float(learning_rate))
        level_losses: list[float] = []
        for step in range(count):
            optimiser.zero_grad()
            ddf = scaling_and_squaring(velocity, integration_steps, warp=integrate)
            weight = weight_prior.activation(logits)
            if grid != image_grid:
                ddf, weight = resize_ddf(ddf, size=image_grid), _resize(weight, image_grid)
            similarity = local_normalized_cross_correlation_loss(warp(m, ddf), f, kernel_size=kernel_size)
            reg = regulariser(ddf, weight)
            loss = similarity + reg.total
            loss.backward()
            optimiser.step()
            history.append(
                {
                    "level": level,
                    "step": step,
                    "loss": float(loss.detach()),
                    "similarity": float(similarity.detach()),
                    "diffusion": float(reg.diffusion.detach()),
                    "prior": float(reg.prior.detach()),
                }
            )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(level=level, loss=f"{history[-1]['loss']:.4f}")
            level_losses.append(history[-1]["loss"])
            if tolerance > 0 and _converged(level_losses, tolerance, patience):
                if bar is not None:
                    bar.update(count - step - 1)
                break
    if bar is not None:
        bar.close()
    assert velocity is not None and logits is not None
    with torch.no_grad():
        v = velocity.detach()
        ddf = resize_ddf(scaling_and_squaring(v, integration_steps, warp=warp), size=size)
        inverse = resize_ddf(scaling_and_squaring(-v, integration_steps, warp=warp), size=size)
        weight = _resize(weight_prior.activation(logits.detach()), size)
    return InstanceOptimizationResult(ddf, inverse, weight, v, history)


def summarize_history(history: Sequence[dict[str, float]]) -> dict[str, Any]:
    """First and last values of each term (for reports)."""
    if not history:
        return {}
    keys = ("loss", "similarity", "diffusion", "prior")
    return {"steps": len(history), "first": {k: history[0][k] for k in keys}, "last": {k: history[-1][k] for k in keys}}
