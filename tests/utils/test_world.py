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
"""World coordinates, resampling through world transforms, and their ITK counterparts (ITK does the checking)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svreg_monai.utils.itk_io import (
    itk_affine_transform,
    itk_composite_transform,
    itk_displacement_transform,
    itk_image,
)
from svreg_monai.utils.world import (
    RAS_TO_LPS,
    check_affine,
    ddf_to_world,
    resample_through,
    sample_at_world_points,
    world_coordinates,
    world_to_voxel,
)


def _rotation(angles: tuple[float, float, float]) -> np.ndarray:
    a, b, c = np.deg2rad(angles)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(angles=(10.0, -20.0, 30.0), spacing=(1.5, 1.0, 2.0), flip=(-1, 1, 1), origin=(10.0, -5.0, 3.0)):
    """A rotated, flipped, anisotropic RAS voxel-to-world matrix."""
    a = np.eye(4)
    a[:3, :3] = _rotation(angles) @ np.diag(flip) @ np.diag(spacing)
    a[:3, 3] = origin
    return a


AFFINES = [
    np.diag([2.0, 2.0, 2.0, 1.0]),
    np.diag([-1.0, 1.0, 1.0, 1.0]),  # LAS
    oblique_affine(),
    oblique_affine(angles=(0.0, 90.0, 0.0), spacing=(1.0, 3.0, 0.5), flip=(1, -1, -1)),
]


@pytest.mark.parametrize("affine", AFFINES)
def test_world_coordinates_match_the_affine(affine):
    shape = (3, 4, 5)
    w = world_coordinates(affine, shape, dtype=torch.float64)
    for index in [(0, 0, 0), (1, 2, 3), (2, 3, 4)]:
        np.testing.assert_allclose(w[index].numpy(), affine[:3, :3] @ index + affine[:3, 3], atol=1e-12)
    np.testing.assert_allclose(world_to_voxel(w, affine)[1, 2, 3].numpy(), [1, 2, 3], atol=1e-9)


@pytest.mark.parametrize("affine", AFFINES)
def test_sampling_a_linear_function_is_exact(affine):
    """Trilinear interpolation reproduces a function linear in the voxel index, at any world point inside."""
    shape = (6, 7, 8)
    idx = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij"))
    image = (1.0 + 0.5 * idx[0] - 0.25 * idx[1] + 2.0 * idx[2])[None]
    rng = np.random.default_rng(0)
    vox = rng.uniform(0.2, np.array(shape) - 1.2, size=(5, 4, 3, 3))
    points = torch.as_tensor(vox @ affine[:3, :3].T + affine[:3, 3])
    got = sample_at_world_points(image, affine, points)[0]
    want = 1.0 + 0.5 * vox[..., 0] - 0.25 * vox[..., 1] + 2.0 * vox[..., 2]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-9)


def test_ddf_to_world_is_the_linear_part():
    a = oblique_affine()
    u = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    w = ddf_to_world(u, a)
    np.testing.assert_allclose(w[1, :, 2, 3, 4].numpy(), a[:3, :3] @ u[1, :, 2, 3, 4].numpy(), atol=1e-12)
    np.testing.assert_allclose(ddf_to_world(u[0], a).numpy(), w[0].numpy())


def test_resample_through_identity_and_a_shift():
    a = oblique_affine()
    image = torch.rand(1, 6, 7, 8, dtype=torch.float64)
    same = resample_through(image, a, a, (6, 7, 8))
    np.testing.assert_allclose(same.numpy(), image.numpy(), atol=1e-9)
    # a world translation by one voxel axis: q = p + a[:3, 0] samples voxel i + 1
    shift = np.eye(4)
    shift[:3, 3] = a[:3, 0]
    moved = resample_through(image, a, a, (6, 7, 8), matrix=shift)
    np.testing.assert_allclose(moved[0, :-1].numpy(), image[0, 1:].numpy(), atol=1e-9)
    # the same shift as a displacement field applied before an identity matrix
    ddf = torch.zeros(3, 6, 7, 8, dtype=torch.float64)
    ddf[0] = 1.0
    moved2 = resample_through(image, a, a, (6, 7, 8), world_ddf=ddf_to_world(ddf, a), ddf_affine=a)
    np.testing.assert_allclose(moved2[0, :-1].numpy(), image[0, 1:].numpy(), atol=1e-9)


@pytest.mark.parametrize(
    "affine, match",
    [
        (np.eye(3), "must be a"),
        (np.diag([1.0, 0.0, 1.0, 1.0]), "degenerate"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]), "last row"),
    ],
)
def test_check_affine_errors(affine, match):
    with pytest.raises(ValueError, match=match):
        check_affine(affine, spatial_dims=3)


def _ras(point_lps) -> np.ndarray:
    return RAS_TO_LPS[:3, :3] @ np.asarray(point_lps, dtype=np.float64)


@pytest.mark.parametrize("affine", AFFINES[1:])
def test_itk_transforms_agree_with_the_ras_maps(affine):
    """ITK's own TransformPoint on our LPS transforms gives our RAS maps: p + d(p), M p + b, and their composite."""
    shape = (8, 9, 10)
    u = torch.randn(3, *shape, dtype=torch.float64) * 0.7
    world = ddf_to_world(u, affine)
    field = itk_displacement_transform(world, affine)
    m = np.eye(4)
    m[:3, :3] = _rotation((3.0, -4.0, 5.0)) * 1.08
    m[:3, 3] = [2.0, -3.0, 1.5]
    aff = itk_affine_transform(m)
    both = itk_composite_transform([field, aff])
    for index in [(1, 2, 3), (4, 4, 4), (6, 7, 8)]:
        p = affine[:3, :3] @ index + affine[:3, 3]
        d = world[(slice(None), *index)].numpy()
        p_lps = (RAS_TO_LPS[:3, :3] @ p).tolist()
        np.testing.assert_allclose(_ras(field.TransformPoint(p_lps)), p + d, atol=1e-9)
        np.testing.assert_allclose(_ras(aff.TransformPoint(p_lps)), m[:3, :3] @ p + m[:3, 3], atol=1e-9)
        np.testing.assert_allclose(_ras(both.TransformPoint(p_lps)), m[:3, :3] @ (p + d) + m[:3, 3], atol=1e-9)


def test_itk_image_geometry():
    a = oblique_affine()
    image = itk_image(np.arange(60, dtype=np.float64).reshape(1, 3, 4, 5), a)
    assert tuple(image.GetLargestPossibleRegion().GetSize()) == (3, 4, 5)
    index = (2, 1, 3)
    p_lps = image.TransformIndexToPhysicalPoint(index)
    np.testing.assert_allclose(_ras(p_lps), a[:3, :3] @ index + a[:3, 3], atol=1e-9)
    assert image.GetPixel(index) == float(np.arange(60).reshape(3, 4, 5)[index])
