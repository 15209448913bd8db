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
from monai.data import MetaTensor

from svreg_monai.inferers import RegistrationInferer
from svreg_monai.networks.nets.outputs import RegistrationOutput


class Recorder(torch.nn.Module):
    """Returns a ddf = moving + fixed on each channel, a half-resolution velocity and weight = moving."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, moving, fixed, *extra):
        self.seen.append((moving.shape, fixed.shape, extra))
        n = moving.ndim - 2
        ddf = (moving + fixed).repeat(1, n, *([1] * n))
        velocity = F.avg_pool3d(ddf, 2) if n == 3 else F.avg_pool2d(ddf, 2)
        return RegistrationOutput(ddf, velocity, moving)


@pytest.mark.parametrize("shape,size", [((5, 6, 7), (8, 8, 8)), ((8, 8, 8), (8, 8, 8)), ((6, 3), (8, 8))])
def test_pads_and_crops_back(shape, size):
    moving, fixed = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    net = Recorder()
    out = RegistrationInferer(spatial_size=size)(moving, net, fixed)
    assert net.seen[0][0][2:] == size and net.seen[0][1][2:] == size
    assert out.ddf.shape == (2, len(shape), *shape)
    torch.testing.assert_close(out.ddf[:, :1], moving + fixed)  # padding after the image keeps voxel positions
    torch.testing.assert_close(out.weight, moving)
    assert out.velocity.shape[2:] == tuple(-(-s // 2) for s in shape)


def test_no_size_calls_directly_and_passes_codes():
    net = Recorder()
    codes = torch.rand(2, 2)
    RegistrationInferer()(torch.rand(2, 1, 4, 4), net, torch.rand(2, 1, 4, 4), codes)
    assert net.seen[0][2][0] is codes
    RegistrationInferer((8, 8))(torch.rand(2, 1, 4, 4), net, torch.rand(2, 1, 4, 4), codes)
    assert net.seen[1][2][0] is codes and net.seen[1][0][2:] == (8, 8)


def test_plain_tensor_output():
    out = RegistrationInferer((8, 8))(torch.rand(1, 2, 5, 6), lambda x: x[:, :1] * 2)
    assert out.shape == (1, 1, 5, 6)


def test_too_large_names_file():
    image = MetaTensor(torch.rand(1, 1, 10, 8), meta={"filename_or_obj": "sub-07.nii.gz"})
    with pytest.raises(ValueError, match=r"sub-07\.nii\.gz.*multiple of 32"):
        RegistrationInferer((8, 8))(image, Recorder(), torch.rand(1, 1, 10, 8))


def test_mismatched_pair():
    with pytest.raises(ValueError, match="same spatial shape"):
        RegistrationInferer((8, 8))(torch.rand(1, 1, 6, 6), Recorder(), torch.rand(1, 1, 5, 6))


def test_bad_size():
    with pytest.raises(ValueError, match="spatial_size"):
        RegistrationInferer((8,))
