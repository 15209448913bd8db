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

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric

from svreg_monai.flow import warp_labels
from svreg_monai.metrics import dice_per_structure, labels_to_onehot


def test_onehot_selects_and_merges_structures():
    labels = torch.tensor([0, 3, 3, 7, 9, 9, 2]).view(1, 1, 1, 7)
    onehot = labels_to_onehot(labels, [3, (7, 9), 5])
    assert onehot.shape == (1, 3, 1, 7)
    assert onehot[0, 0, 0].tolist() == [0, 1, 1, 0, 0, 0, 0]
    assert onehot[0, 1, 0].tolist() == [0, 0, 0, 1, 1, 1, 0]
    assert onehot[0, 2].sum() == 0


def test_dice_of_warped_labels_with_monai_dicemetric():
    fixed = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    fixed[..., 2:6, 2:6, 2:6] = 4
    moving = torch.zeros_like(fixed)
    moving[..., 3:7, 2:6, 2:6] = 4  # the structure shifted by one voxel along axis 2
    ddf = torch.zeros(1, 3, 8, 8, 8)
    ddf[:, 0] = 1.0  # pull-back by +1 voxel undoes the shift
    metric = DiceMetric(include_background=True, reduction="mean")
    before = metric(labels_to_onehot(moving, [4]), labels_to_onehot(fixed, [4]))
    after = metric(labels_to_onehot(warp_labels(moving, ddf), [4]), labels_to_onehot(fixed, [4]))
    assert before.item() == pytest.approx(2 * 48 / 128)  # overlap 3 of 4 slices of 16 voxels
    assert after.item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "labels, values, match",
    [
        (torch.zeros(1, 2, 4, 4, dtype=torch.long), [1], r"\(B, 1, \*S\)"),
        (torch.zeros(1, 1, 4, 4, dtype=torch.long), [], "at least one"),
        (torch.zeros(1, 1, 4, 4, dtype=torch.long), [1.5], "integers"),
    ],
)
def test_labels_to_onehot_errors(labels, values, match):
    with pytest.raises(ValueError, match=match):
        labels_to_onehot(labels, values)


@pytest.mark.parametrize(
    "pred, target, mask, expected",
    [
        ([[1, 1, 0, 0]], [[1, 0, 0, 0]], None, [2 / 3]),  # 2 * 1 / (2 + 1)
        ([[1, 1, 0, 0], [0, 0, 1, 1]], [[1, 1, 0, 0], [0, 0, 0, 1]], None, [1.0, 2 / 3]),
        ([[0, 0, 0, 0]], [[0, 0, 0, 0]], None, [math.nan]),  # absent from both: NaN, as MONAI's DiceMetric
        ([[1, 0, 0, 0]], [[0, 0, 0, 0]], None, [math.nan]),  # absent from the target: NaN (ignore_empty)
        ([[1, 1, 1, 0]], [[1, 0, 1, 1]], [True, True, False, False], [2 / 3]),  # only the first two voxels count
    ],
)
def test_dice_per_structure(pred, target, mask, expected):
    p = torch.tensor(pred, dtype=torch.float32)[None, :, :, None]  # (1, K, 4, 1)
    t = torch.tensor(target, dtype=torch.float32)[None, :, :, None]
    m = None if mask is None else torch.tensor(mask)[:, None]
    np.testing.assert_allclose(dice_per_structure(p, t, m), expected, rtol=1e-6, equal_nan=True)


def test_dice_per_structure_bad_shapes():
    with pytest.raises(ValueError, match="must both be"):
        dice_per_structure(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="mask"):
        dice_per_structure(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), torch.zeros(3, 3, dtype=torch.bool))
