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

import pytest
import torch
import torch.nn.functional as F

from svreg_monai.flow import RegistrationWarp, resize_ddf, warp_image, warp_labels


def random_labels(shape: tuple[int, ...], values: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(values), shape, generator=g)
    return torch.tensor(values)[idx]


@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("shape", [(2, 1, 9, 10), (1, 1, 6, 7, 8)])
def test_identity_keeps_labels(mode, shape):
    labels = random_labels(shape, [0, 2, 5, 7])
    ddf = torch.zeros(shape[0], len(shape) - 2, *shape[2:])
    out = warp_labels(labels, ddf, num_classes=8, mode=mode)
    assert out.dtype == labels.dtype
    assert torch.equal(out, labels)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("chunk_size", [1, 3, 16])
def test_integer_shift_moves_labels(mode, chunk_size):
    labels = random_labels((1, 1, 7, 8, 9), [0, 1, 2, 3, 4], seed=1).to(torch.uint8)
    ddf = torch.zeros(1, 3, 7, 8, 9)
    ddf[:, 1] = 1.0  # out(x) = labels(x + e_1)
    out = warp_labels(labels, ddf, mode=mode, chunk_size=chunk_size)
    assert torch.equal(out[..., :-1, :], labels[..., 1:, :])
    assert (out[..., -1, :] == 0).all()  # outside the image: background


def test_linear_label_warp_at_half_voxel_picks_a_neighbour():
    labels = torch.zeros(1, 1, 1, 6, dtype=torch.long)
    labels[..., 3:] = 9
    ddf = torch.zeros(1, 2, 1, 6)
    ddf[:, 1] = 0.4
    out = warp_labels(labels, ddf, num_classes=10)
    # sample points 0.4 .. 5.4: 2.4 is closer to a 0 voxel than to a 9 voxel; 5.4 is 60 % voxel 5 (label 9)
    # and 40 % zero padding, which votes for no class
    assert out.flatten().tolist() == [0, 0, 0, 9, 9, 9]


def test_warp_labels_errors():
    labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    ddf = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="num_classes"):
        warp_labels(labels + 3, ddf, num_classes=3)
    with pytest.raises(ValueError, match="non-negative"):
        warp_labels(labels - 1, ddf)
    with pytest.raises(ValueError, match=r"\(B, 1, \*S\)"):
        warp_labels(torch.zeros(1, 2, 4, 4, dtype=torch.long), ddf)
    with pytest.raises(ValueError, match="mode"):
        warp_labels(labels, ddf, mode="cubic")
    with pytest.raises(ValueError, match="channels"):
        warp_labels(labels, torch.zeros(1, 3, 4, 4))


def test_warp_image_checks_shapes():
    with pytest.raises(ValueError, match="spatial size"):
        warp_image(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="same device"):
        warp_image(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4, device="meta"))


@pytest.mark.parametrize("shape", [(2, 2, 6, 7), (1, 3, 4, 5, 6)])
@pytest.mark.parametrize("factor", [2, 0.5])
def test_resize_constant_field_rescales_values(shape, factor):
    c = torch.tensor([1.5, -0.5, 0.25][: shape[1]])
    ddf = c.view(1, -1, *([1] * (len(shape) - 2))).expand(shape).clone()
    out = resize_ddf(ddf, scale_factor=factor)
    expected_size = tuple(int(s * factor) for s in shape[2:])
    assert out.shape[2:] == expected_size
    assert torch.allclose(out, factor * c.view(1, -1, *([1] * (len(shape) - 2))).expand_as(out))


def test_resize_matches_reference_upsampling_and_size_argument():
    ddf = torch.randn(1, 3, 5, 6, 7)
    ref = F.interpolate(ddf, scale_factor=2, mode="trilinear", align_corners=False) * 2
    assert torch.allclose(resize_ddf(ddf, scale_factor=2), ref)
    assert torch.allclose(resize_ddf(ddf, size=(10, 12, 14)), ref, atol=1e-6)
    # anisotropic: each channel scaled by its own axis factor
    out = resize_ddf(torch.ones(1, 2, 4, 6), size=(8, 3))
    assert torch.allclose(out[:, 0], torch.full((1, 8, 3), 2.0))
    assert torch.allclose(out[:, 1], torch.full((1, 8, 3), 0.5))


def test_resize_preserves_physical_translation():
    # a translation by t voxels of the fine grid is t/2 voxels of the coarse grid: warping agrees after resizing
    fine = torch.zeros(1, 2, 16, 16)
    fine[:, 0] = 2.0
    coarse = resize_ddf(fine, scale_factor=0.5)
    assert torch.allclose(coarse, torch.full_like(coarse, 0.0).index_fill(1, torch.tensor([0]), 1.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [({}, "exactly one"), ({"scale_factor": 2, "size": (4, 4)}, "exactly one"), ({"size": (4,)}, "size")],
)
def test_resize_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resize_ddf(torch.zeros(1, 2, 4, 4), **kwargs)
    with pytest.raises(ValueError, match="scale_factor"):
        resize_ddf(torch.zeros(1, 2, 4, 4), scale_factor=-1)


def test_registration_warp_resets_grid_on_dtype_change():
    warp = RegistrationWarp()
    img = torch.rand(1, 1, 5, 5)
    ddf = torch.zeros(1, 2, 5, 5)
    assert torch.equal(warp(img, ddf), img)
    assert torch.equal(warp(img.double(), ddf.double()), img.double())
    assert warp.ref_grid.dtype == torch.float64
