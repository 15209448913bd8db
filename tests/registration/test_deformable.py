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
"""SPR instance optimisation: the objective decreases, a known smooth warp is recovered without folding, λ drops
where the warp bends, and bad options are named."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from svreg_monai.flow.integration import scaling_and_squaring
from svreg_monai.flow.warping import warp_image
from svreg_monai.metrics.functional import jacobian_determinant
from svreg_monai.networks.blocks.weight_head import regularization_weight_activation
from svreg_monai.registration import optimize_spr, weight_logits

SHAPE = (32, 32, 32)


def textured_phantom() -> torch.Tensor:
    """Smoothed noise inside an ellipsoid: texture everywhere the warp has to be found."""
    g = torch.Generator().manual_seed(0)
    noise = F.avg_pool3d(torch.rand(1, 1, *SHAPE, generator=g), 3, 1, 1)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    ax = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    r = ((ax[0] / 0.85) ** 2 + (ax[1] / 0.8) ** 2 + (ax[2] / 0.75) ** 2).sqrt()
    return noise * torch.sigmoid((1 - r) * 12)


def local_warp() -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth deformation confined to one side (x > 0) and the bump that localises it."""
    ax = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    bump = torch.exp(-((ax[0] - 0.4) ** 2 + ax[1] ** 2 + ax[2] ** 2) / (2 * 0.25**2))
    v = torch.zeros(1, 3, *SHAPE)
    v[:, 0], v[:, 1] = 2.5 * bump, 1.5 * bump
    return scaling_and_squaring(v, 7), bump


@pytest.fixture(scope="module")
def problem():
    moving = textured_phantom()
    u, bump = local_warp()
    return moving, warp_image(moving, u), u, bump


OPTIONS = {"levels": (2, 1), "steps": (100, 30), "learning_rate": 0.1, "kernel_size": 5, "field_scale": 1}


@pytest.fixture(scope="module")
def solved(problem):
    moving, fixed, _, _ = problem
    return optimize_spr(moving, fixed, lambda_max=1.0, prior_param=1.05, **OPTIONS)


@pytest.fixture(scope="module")
def strongly_regularised(problem):
    """A stronger diffusion term and a weaker prior: λ must give way where the warp bends."""
    moving, fixed, _, _ = problem
    return optimize_spr(moving, fixed, lambda_max=5.0, prior_param=1.01, **OPTIONS)


def test_the_objective_decreases(problem, solved):
    history = solved.history
    assert len(history) == 130 and {"loss", "similarity", "diffusion", "prior"} <= set(history[0])
    for level in (0, 1):
        losses = [h["loss"] for h in history if h["level"] == level]
        assert losses[-1] < losses[0]
    moving, fixed, _, _ = problem
    before = F.mse_loss(moving, fixed)
    after = F.mse_loss(warp_image(moving, solved.ddf), fixed)
    assert after < 0.3 * before


def test_a_known_smooth_warp_is_recovered_without_folding(problem, solved):
    _, _, u, bump = problem
    inside = bump > 0.3  # where the deformation is (and texture is)
    error = (solved.ddf - u).norm(dim=1)[0][inside]
    assert error.mean() < 0.25 * u.norm(dim=1)[0][inside].mean(), (error.mean(), u.norm(dim=1)[0][inside].mean())
    assert float(jacobian_determinant(solved.ddf).min()) > 0
    assert solved.ddf.shape == solved.inverse_ddf.shape == (1, 3, *SHAPE)
    composed = solved.ddf + warp_image(solved.inverse_ddf, solved.ddf)
    assert composed[..., 4:-4, 4:-4, 4:-4].abs().max() < 0.3


def test_weight_is_lower_where_the_warp_bends(strongly_regularised, problem):
    _, _, _, bump = problem
    w = strongly_regularised.weight[0, 0]
    assert w.shape == SHAPE and float(w.min()) > 0 and float(w.max()) <= 1
    assert w[bump > 0.5].mean() < 0.5 < 0.9 < w[bump < 0.05].mean()
    assert float(jacobian_determinant(strongly_regularised.ddf).min()) > 0


def test_half_resolution_fields(problem):
    """``field_scale=2``: velocity and λ on half the level's grid, the displacement still on the input grid."""
    moving, fixed, u, bump = problem
    out = optimize_spr(moving, fixed, lambda_max=1.0, prior_param=1.05, **{**OPTIONS, "field_scale": 2})
    assert out.velocity.shape == (1, 3, 16, 16, 16) and out.ddf.shape == (1, 3, *SHAPE)
    inside = bump > 0.3
    error = (out.ddf - u).norm(dim=1)[0][inside]
    assert error.mean() < 0.35 * u.norm(dim=1)[0][inside].mean()
    assert float(jacobian_determinant(out.ddf).min()) > 0


def test_uniform_weight_ablation_keeps_the_weight(problem):
    moving, fixed, _, _ = problem
    out = optimize_spr(moving, fixed, levels=(2,), steps=(5,), learn_weight=False, initial_weight=1.0)
    assert torch.allclose(out.weight, torch.ones_like(out.weight), atol=1e-3)


def test_warm_start_from_a_velocity_and_weight(problem):
    moving, fixed, u, _ = problem
    v = torch.zeros(1, 3, 16, 16, 16)
    start = optimize_spr(moving, fixed, levels=(1,), steps=(0,), initial_velocity=v, initial_weight=0.7)
    assert start.ddf.abs().max() == 0 and torch.allclose(start.weight, torch.full_like(start.weight, 0.7), atol=1e-4)
    w = torch.rand(1, 1, 8, 8, 8) * 0.8 + 0.1
    for prior in ("beta", "gaussian"):
        torch.testing.assert_close(
            regularization_weight_activation(weight_logits(w, prior), prior), w, atol=1e-4, rtol=0
        )


def test_stopping_rule_ends_each_level_once_the_loss_flattens(problem):
    """With a tolerance, a level stops when the mean relative decrease over ``patience`` steps falls below it;
    the history says where, and the rule's arithmetic is exact on a synthetic sequence."""
    from svreg_monai.registration.deformable import _converged

    assert not _converged([1.0, 0.5], 0.1, 2)  # not enough steps yet
    assert not _converged([-1.0, -1.2, -1.4], 0.05, 2)  # 0.4 fall over 2 steps = 0.2 per step of |1| > 0.05
    assert _converged([-1.0, -1.01, -1.02], 0.05, 2)  # 0.01 per step < 0.05
    moving, fixed, _, _ = problem
    full = optimize_spr(moving, fixed, levels=(2, 1), steps=(60, 30), kernel_size=5)
    stopped = optimize_spr(moving, fixed, levels=(2, 1), steps=(60, 30), kernel_size=5, tolerance=2e-4, patience=5)
    per_level = [sum(h["level"] == lvl for h in stopped.history) for lvl in (0, 1)]
    assert 6 < per_level[0] < 60 and 5 < per_level[1] < 30, per_level
    assert len(full.history) == 90
    losses = [h["loss"] for h in stopped.history if h["level"] == 0]
    assert (losses[-6] - losses[-1]) < 2e-4 * 5 * abs(losses[-6])  # it stopped because the rule held
    assert (losses[-7] - losses[-2]) >= 2e-4 * 5 * abs(losses[-7])  # and not a step earlier


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"levels": (2, 1), "steps": (3,)}, "equal length"),
        ({"levels": (1, 2), "steps": (1, 1)}, "coarse to fine"),
        ({"levels": (0,), "steps": (1,)}, "factors >= 1"),
        ({"steps": (-1, 1)}, "steps must be >= 0"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"lambda_max": -1.0}, "lambda_max"),
        ({"prior": "laplace"}, "prior"),
        ({"field_scale": 0}, "field_scale"),
        ({"tolerance": -1e-3}, "tolerance"),
        ({"tolerance": float("nan")}, "tolerance"),
        ({"patience": 0}, "patience"),
        ({"patience": 2.5}, "patience"),
    ],
)
def test_bad_options(kwargs, match):
    x = torch.rand(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match=match):
        optimize_spr(x, x, **kwargs)


def test_bad_images():
    with pytest.raises(ValueError, match="same shape"):
        optimize_spr(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 6))
    bad = torch.rand(1, 1, 8, 8, 8)
    bad[0, 0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        optimize_spr(bad, torch.rand(1, 1, 8, 8, 8))
