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

import math
import os
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import torch
from parameterized import parameterized

from svreg_monai.visualize import (
    PANEL_NAMES,
    central_slices,
    deformed_grid,
    grid_image,
    log_jacobian_map,
    registration_figure,
    tensorboard_slices,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def identity_coords(shape: tuple[int, ...]) -> torch.Tensor:
    """``(1, N, *S)`` voxel coordinates x, so that ``a * x`` is a uniform scaling displacement."""
    return torch.stack(torch.meshgrid(*(torch.arange(s, dtype=torch.float64) for s in shape), indexing="ij"))[None]


def test_grid_image_2d_values():
    grid = grid_image((6, 7), spacing=3, thickness=1)
    on_row = torch.tensor([1, 0, 0, 1, 0, 0], dtype=torch.bool)[:, None]
    on_col = torch.tensor([1, 0, 0, 1, 0, 0, 1], dtype=torch.bool)[None, :]
    assert grid.shape == (1, 1, 6, 7) and grid.dtype == torch.float32
    assert torch.equal(grid[0, 0], (on_row | on_col).float())
    thick = grid_image((6, 7), spacing=3, thickness=2, axes=(1,))[0, 0]
    assert torch.equal(thick[0], torch.tensor([1.0, 1, 0, 1, 1, 0, 1]))
    assert torch.equal(thick[:, 0], torch.ones(6))  # lines across axis 1 only


@parameterized.expand([((9, 10), None), ((6, 7, 8), None), ((6, 7, 8), (0, 1)), ((5, 9), (-1,))])
def test_deformed_grid_zero_ddf_is_grid_exactly(shape, axes):
    ddf = torch.zeros(2, len(shape), *shape)
    out = deformed_grid(ddf, spacing=3, axes=axes)
    assert out.shape == (2, 1, *shape)
    assert torch.equal(out, grid_image(shape, spacing=3, axes=axes).expand(2, 1, *shape))


def test_deformed_grid_shift_and_half_voxel():
    shape = (8, 9)
    grid = grid_image(shape, spacing=4)[0, 0]
    ddf = torch.zeros(1, 2, *shape)
    ddf[:, 0] = 1.0  # out(x) = grid(x + e_0)
    out = deformed_grid(ddf, spacing=4)[0, 0]
    assert torch.equal(out[:-1], grid[1:])
    assert torch.equal(out[-1], torch.zeros(9))  # samples outside the image
    ddf = torch.zeros(1, 2, *shape)
    ddf[:, 1] = 0.5
    out = deformed_grid(ddf, spacing=4, axes=(1,))[0, 0]
    # columns 0 and 4 are lines: half a voxel away the profile is 0.5, further away 0
    assert torch.allclose(out[0], torch.tensor([0.5, 0, 0, 0.5, 0.5, 0, 0, 0.5, 0]))


@parameterized.expand([(2, 0.25), (2, -0.4), (3, 0.1), (3, -0.3)])
def test_log_jacobian_of_uniform_scaling(n, a):
    shape = (5, 6, 7)[:n]
    ddf = (a * identity_coords(shape)).expand(2, n, *shape)
    out = log_jacobian_map(ddf)
    assert out.shape == (2, 1, *shape) and out.dtype == torch.float64
    expected = n * math.log(1.0 + a)  # det J = (1 + a)^N at every voxel, border included
    assert torch.allclose(out, torch.full_like(out, expected), atol=1e-12)


def test_log_jacobian_folding_is_clamped():
    ddf = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    ddf[:, 0] = -2.0 * identity_coords((5, 5))[:, 0]  # x0 -> -x0: det J = -1
    out = log_jacobian_map(ddf, eps=1e-3)
    assert torch.allclose(out, torch.full_like(out, math.log(1e-3)))
    with pytest.raises(ValueError, match="eps"):
        log_jacobian_map(ddf, eps=0.0)


def test_grid_argument_errors():
    with pytest.raises(ValueError, match="spacing"):
        grid_image((4, 4), spacing=1)
    with pytest.raises(ValueError, match="thickness"):
        grid_image((4, 4), spacing=3, thickness=3)
    with pytest.raises(ValueError, match="axes"):
        grid_image((4, 4), axes=(2,))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        grid_image((4,))
    with pytest.raises(ValueError, match="channels"):
        deformed_grid(torch.zeros(1, 3, 4, 4))


def test_central_slices():
    vol = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert torch.equal(central_slices(vol), vol[..., 2])
    assert torch.equal(central_slices(vol, axis=0), vol[:, 1])
    assert torch.equal(central_slices(vol, axis=1, index=-1), vol[:, :, 3])
    assert torch.equal(central_slices(vol[..., 0]), vol[..., 0])  # 2D unchanged
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        central_slices(vol[0, 0])
    with pytest.raises(ValueError, match="axis"):
        central_slices(vol, axis=3)


@parameterized.expand([((12, 10),), ((8, 10, 6),)])
def test_tensorboard_slices(shape):
    n = len(shape)
    g = torch.Generator().manual_seed(0)
    fixed = torch.rand(1, *shape, generator=g) * 100
    weight = torch.full((1, *shape), 0.3)
    out = tensorboard_slices(fixed, fixed + 1, fixed, weight, torch.zeros(n, *shape), grid_spacing=4)
    assert list(out) == list(PANEL_NAMES)
    for img in out.values():
        assert img.shape == (1, 12, 10) if n == 2 else (1, 8, 10)
        assert img.dtype == torch.float32 and img.min() >= 0 and img.max() <= 1
    assert torch.allclose(out["fixed"], out["moving"], atol=1e-6)  # each panel min-max normalised
    assert torch.equal(out["difference"], torch.zeros_like(out["difference"]))
    assert torch.allclose(out["weight"], torch.full_like(out["weight"], 0.3))  # lambda in [0, 1] kept
    assert torch.equal(out["log_jacobian"], torch.full_like(out["log_jacobian"], 0.5))  # no volume change
    in_plane = None if n == 2 else (0, 1)
    assert torch.equal(out["deformed_grid"][0], central_slices(grid_image(shape, 4, axes=in_plane)[0])[0])
    two_channels = tensorboard_slices(warped=torch.cat([fixed, -fixed]))
    assert torch.equal(two_channels["warped"], out["fixed"])  # the first channel is shown
    only_ddf = tensorboard_slices(ddf=torch.zeros(n, *shape))
    assert set(only_ddf) == {"deformed_grid", "log_jacobian"}


def test_tensorboard_slices_errors():
    with pytest.raises(ValueError, match="none"):
        tensorboard_slices()
    with pytest.raises(ValueError, match=r"\(1, 5, 5\)"):
        tensorboard_slices(torch.zeros(1, 4, 4), torch.zeros(1, 5, 5))


@parameterized.expand([((16, 12),), ((10, 12, 8),)])
def test_registration_figure_writes_png(shape):
    n = len(shape)
    g = torch.Generator().manual_seed(1)
    fixed = torch.rand(1, *shape, generator=g)
    moving = torch.rand(1, *shape, generator=g)
    ddf = 0.5 * torch.randn(n, *shape, generator=g)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "sub" / "figure.png"
        out = registration_figure(fixed, moving, moving, torch.rand(1, *shape, generator=g), ddf, path, title="t")
        assert out == path
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert os.listdir(path.parent) == ["figure.png"]
        registration_figure(fixed, moving, moving, None, None, path)  # optional panels left empty
        assert os.listdir(path.parent) == ["figure.png"]


def test_registration_figure_errors(tmp_path):
    x = torch.zeros(1, 6, 6)
    with pytest.raises(ValueError, match="fig.jpg"):
        registration_figure(x, x, x, None, None, tmp_path / "fig.jpg")
    with pytest.raises(ValueError, match=r"\(3, 6, 6\)"):
        registration_figure(x, x, x, None, torch.zeros(3, 6, 6), tmp_path / "fig.png")
    blocked = {"matplotlib": None, "matplotlib.figure": None, "matplotlib.backends.backend_agg": None}
    with mock.patch.dict(sys.modules, blocked), pytest.raises(ImportError, match="pip install matplotlib"):
        registration_figure(x, x, x, None, None, tmp_path / "fig.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "weight_limits, expected",
    [(None, (0.998, 0.9995)), ((0.0, 1.0), (0.0, 1.0))],
)
def test_registration_figure_weight_colours_span_the_map(tmp_path, weight_limits, expected):
    # a nearly flat lambda (the demo model's: within [0.998, 1]) gets a colour scale over its own range, not one
    # colour of [0, 1]; an explicit scale is honoured
    from matplotlib.axes import Axes

    shape = (12, 10)
    weight = torch.linspace(0.998, 0.9995, 12)[:, None].expand(1, *shape).clone()
    x = torch.rand(1, *shape)
    original, limits = Axes.imshow, []

    def record(self, *args, **kwargs):
        if kwargs.get("cmap") == "viridis":
            limits.append((kwargs["vmin"], kwargs["vmax"]))
        return original(self, *args, **kwargs)

    with mock.patch.object(Axes, "imshow", record):
        registration_figure(x, x, x, weight, None, tmp_path / "f.png", weight_limits=weight_limits)
    assert len(limits) == 1
    assert limits[0] == pytest.approx(expected, abs=1e-6)
