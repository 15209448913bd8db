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

import os

import numpy as np
import pytest
import torch

from svreg_monai.visualize import hyperparameter_grid_figure, landscape_figure

pytest.importorskip("matplotlib", reason="the figures need matplotlib (pip install svreg-monai[bundle])")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("shape", [(3, 3), (2, 5), (30, 30)])
def test_landscape_figure_writes_png_with_nan_cells_and_best(tmp_path, shape):
    values = np.random.default_rng(0).random(shape)
    values[0, 0] = np.nan
    path = landscape_figure(
        values, np.linspace(0, 0.2, shape[0]), np.linspace(0, 5, shape[1]), tmp_path / "sub" / "dice.png",
        title="dice", best=(shape[0] - 1, shape[1] - 1),
    )  # fmt: skip
    assert path.read_bytes()[:8] == PNG
    assert os.listdir(tmp_path / "sub") == ["dice.png"]  # no temporary file left


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"values": np.zeros((2, 3))}, r"shape \(len\(row_values\), len\(col_values\)\) = \(3, 3\)"),
        ({"best": (3, 0)}, "best must be a cell"),
        ({"path": "dice.jpg"}, r"must end with '.png'"),
    ],
)
def test_landscape_figure_rejects_bad_input(tmp_path, kwargs, match):
    args = {"values": np.zeros((3, 3)), "row_values": [0, 1, 2], "col_values": [0, 1, 2], "path": "a.png"}
    args.update(kwargs)
    args["path"] = tmp_path / args["path"]
    with pytest.raises(ValueError, match=match):
        landscape_figure(**args)


@pytest.mark.parametrize("spatial", [(16, 12), (16, 12, 8)])
def test_hyperparameter_grid_figure_2d_and_3d(tmp_path, spatial):
    n = len(spatial)
    weights = [[torch.rand(1, *spatial) for _ in range(3)] for _ in range(2)]
    ddfs = [[torch.randn(n, *spatial) for _ in range(3)] for _ in range(2)]
    path = hyperparameter_grid_figure(weights, ddfs, [0.02, 0.2], [0.5, 2.5, 5.0], tmp_path / "f.png", title="t")
    assert path.read_bytes()[:8] == PNG


def test_hyperparameter_grid_figure_checks_the_nested_shapes(tmp_path):
    weights = [[torch.rand(1, 8, 8)] * 2] * 2
    ddfs = [[torch.rand(2, 8, 8)] * 2] * 2
    with pytest.raises(ValueError, match="weights must hold 2 rows of 3 maps"):
        hyperparameter_grid_figure(weights, ddfs, [0, 1], [0, 1, 2], tmp_path / "f.png")
    with pytest.raises(ValueError, match=r"ddfs\[0\]\[0\] must have 2 channels"):
        hyperparameter_grid_figure(weights, [[torch.rand(3, 8, 8)] * 2] * 2, [0, 1], [0, 1], tmp_path / "f.png")
