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
"""Multi-resolution affine registration in world coordinates: a known affine map is recovered."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svreg_monai.registration import affine_register, center_of_mass, downsample_to_spacing
from svreg_monai.utils.world import resample_through, world_coordinates
from tests.utils.test_world import _rotation, oblique_affine


def phantom(affine: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Three Gaussian blobs and an ellipsoid, defined in world millimetres (so any grid samples the same object)."""
    p = world_coordinates(affine, shape, dtype=torch.float64)
    out = torch.zeros(shape, dtype=torch.float64)
    for centre, sigma, amp in [((10, 0, 5), 9.0, 1.0), ((-15, 8, -4), 6.0, 0.7), ((2, -14, 10), 5.0, 0.5)]:
        out += amp * torch.exp(-((p - torch.tensor(centre)) ** 2).sum(-1) / (2 * sigma**2))
    r = ((p / torch.tensor([30.0, 24.0, 20.0])) ** 2).sum(-1).sqrt()
    out += 0.4 * torch.sigmoid((1.0 - r) * 12)
    return out[None].float()


def test_center_of_mass_and_downsampling():
    a = oblique_affine()
    image = torch.zeros(1, 8, 8, 8)
    image[0, 2:4, 2:4, 2:4] = 1.0
    np.testing.assert_allclose(center_of_mass(image, a), a[:3, :3] @ [2.5, 2.5, 2.5] + a[:3, 3], atol=1e-9)
    pooled, pa = downsample_to_spacing(image, a, 3.0)  # voxel sizes (1.5, 1, 2) -> factors (2, 3, 2)
    assert tuple(pooled.shape) == (1, 4, 3, 4)
    np.testing.assert_allclose(center_of_mass(pooled, pa), center_of_mass(image, a), atol=1e-6)


@pytest.mark.parametrize("similarity", ["ncc", "lncc"])
def test_a_known_affine_is_recovered(similarity):
    fixed_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed_affine[:3, 3] = -40
    fixed = phantom(fixed_affine, (40, 40, 40))
    truth = np.eye(4)  # fixed -> moving points
    truth[:3, :3] = _rotation((6.0, -4.0, 8.0)) @ np.diag([1.05, 0.97, 1.02])
    truth[:3, 3] = [4.0, -3.0, 2.5]
    # the moving image lives on another (oblique, LAS-like) grid: moving(q) = fixed-object(truth^-1 q)
    moving_affine = oblique_affine(angles=(5.0, 0.0, -10.0), spacing=(1.7, 1.7, 2.2), origin=(40.0, -42.0, -40.0))
    moving = resample_through(
        phantom(fixed_affine, (40, 40, 40)), fixed_affine, moving_affine, (48, 48, 40), matrix=np.linalg.inv(truth)
    )
    res = affine_register(
        moving,
        moving_affine,
        fixed,
        fixed_affine,
        similarity=similarity,
        spacings=(8.0, 4.0),
        iterations=(150, 80),
        learning_rate=0.01,
    )
    points = world_coordinates(fixed_affine, (40, 40, 40), dtype=torch.float64)[::8, ::8, ::8].reshape(-1, 3).numpy()
    inside = np.linalg.norm(points, axis=1) < 30
    err = points[inside] @ (res.matrix - truth)[:3, :3].T + (res.matrix - truth)[:3, 3]
    start = points[inside] @ (res.initial_matrix - truth)[:3, :3].T + (res.initial_matrix - truth)[:3, 3]
    assert np.linalg.norm(err, axis=1).max() < 1.5, res.matrix  # mm, on a 2 mm grid
    assert np.linalg.norm(start, axis=1).max() > 3.0  # the centre-of-mass start was far off
    assert res.losses[-1] < {"ncc": -0.95, "lncc": -0.75}[similarity]  # LNCC is lower in flat regions


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"similarity": "mi"}, "similarity"),
        ({"spacings": (8.0,), "iterations": (1, 2)}, "equal length"),
        ({"spacings": (0.0,), "iterations": (1,)}, "spacings must be > 0"),
        ({"learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_bad_options(kwargs, match):
    a = np.eye(4)
    image = torch.rand(1, 8, 8, 8)
    with pytest.raises(ValueError, match=match):
        affine_register(image, a, image, a, **kwargs)
