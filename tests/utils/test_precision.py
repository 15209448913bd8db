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

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from svreg_monai.utils import autocast, check_mixed_precision, to_float32
from svreg_monai.utils.precision import (
    bfloat16_conv_needs_float32,
    guard_bfloat16_convolutions,
    guarded_convolution,
)


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16),
    ],
)
def test_check_mixed_precision_accepts(value, expected):
    assert check_mixed_precision(value) is expected


@pytest.mark.parametrize("value", ["fp16", "float32", torch.float32, torch.float64, True, 16, ""])
def test_check_mixed_precision_rejects_with_value(value):
    with pytest.raises(ValueError, match="mixed_precision must be None, 'bfloat16' or 'float16', got"):
        check_mixed_precision(value)


def test_autocast():
    a, b = torch.rand(4, 4), torch.rand(4, 4)
    with autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.float32
    with autocast("cpu", torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_float32_operations_stay_float32_under_autocast():
    # the assumption behind casting up being enough (svreg_monai.utils.precision): the operations of warps,
    # integration and the weight activation are not lowered by autocast when their inputs are float32
    x, grid = torch.rand(1, 2, 4, 5, 6), torch.rand(1, 4, 5, 6, 3) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = [
            F.grid_sample(x, grid, align_corners=True),
            F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False),
            torch.sigmoid(x),
            F.softplus(x),
            x + x * 0.5,
        ]
    assert all(o.dtype == torch.float32 for o in outputs)


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.int64, torch.int64),
    ],
)
def test_to_float32(dtype, expected):
    x = torch.ones(3, dtype=dtype)
    assert to_float32(x).dtype == expected
    if dtype == expected:
        assert to_float32(x) is x


@pytest.mark.parametrize(
    "shape, kernel, stride, padding, transposed, expected",
    [
        ((2, 8, 8), 3, 1, 1, False, True),  # output depth 2 < kernel 3: the first decoder block at an axis of 32
        ((8, 2, 8), 3, 1, 1, False, True),
        ((3, 8, 8), 3, 1, 1, False, False),
        ((4, 4, 4), 3, 1, 1, False, False),
        ((1, 8, 8), 3, 1, 1, False, True),
        ((16, 16, 4), 3, 2, 1, False, True),  # stride 2: output (8, 8, 2)
        ((16, 16, 6), 3, 2, 1, False, False),  # output (8, 8, 3)
        ((2, 2, 2), 1, 1, 0, False, False),  # 1x1 convolutions are not affected
        ((4, 4, 4), 4, 4, 0, False, True),  # patch embedding to a single patch
        ((2, 8, 8), 3, 2, 1, True, True),  # transposed: its input is the direct convolution's output
        ((8, 8, 8), 3, 2, 1, True, False),
        ((2, 8), 3, 1, "same", False, True),
        ((5, 8), 3, 1, "valid", False, False),  # output (3, 6)
        ((4, 8), 3, 1, "valid", False, True),  # output (2, 6)
        ((8, 8), (3, 1), 1, (1, 0), False, False),
        ((8, 2), (3, 1), 1, (1, 0), False, False),  # the short axis has a kernel of 1
    ],
)
def test_bfloat16_conv_needs_float32(shape, kernel, stride, padding, transposed, expected):
    assert bfloat16_conv_needs_float32(shape, kernel, stride, padding, transposed=transposed) is expected


def test_bfloat16_conv_needs_float32_dilation():
    assert bfloat16_conv_needs_float32((4, 8, 8), 3, 1, 2, dilation=2)  # extent 5, output 4
    assert not bfloat16_conv_needs_float32((6, 8, 8), 3, 1, 2, dilation=2)


@pytest.mark.parametrize("guard", ["module", "functional"])
@pytest.mark.parametrize(
    "shape, kernel, stride, transposed",
    [((2, 8, 8), 3, 1, False), ((8, 8, 1), 3, 2, False), ((2, 4, 4), 3, 2, True), ((6, 6, 6), 3, 1, False)],
)
def test_guarded_convolution_gradients(guard, shape, kernel, stride, transposed, one_thread):
    # the module guard (class swap) and the functional guard give float32-accurate weight gradients under CPU bfloat16
    # autocast on trigger shapes (without them: garbage on AVX512-BF16 CPUs), and bfloat16 ones elsewhere
    torch.manual_seed(0)
    cls = nn.ConvTranspose3d if transposed else nn.Conv3d
    extra = {"output_padding": stride - 1} if transposed else {}
    conv = cls(32, 16, kernel, stride=stride, padding=1, **extra)
    x = torch.randn(1, 32, *shape)
    reference = copy.deepcopy(conv)
    reference(x).square().sum().backward()
    flagged = bfloat16_conv_needs_float32(shape, kernel, stride, 1, transposed=transposed)
    for _ in range(3):
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if guard == "module":
                y = guard_bfloat16_convolutions(conv)(x)
            else:
                fn = F.conv_transpose3d if transposed else F.conv3d
                y = guarded_convolution(
                    fn, x, conv.weight, conv.bias, transposed=transposed, stride=stride, padding=1, **extra
                )
        assert y.dtype == (torch.float32 if flagged else torch.bfloat16)
        y.float().square().sum().backward()
        for p, r in zip(conv.parameters(), reference.parameters()):
            assert bool(torch.isfinite(p.grad).all())
            assert (p.grad - r.grad).norm() <= (1e-5 if flagged else 0.05) * r.grad.norm()


def test_guard_keeps_parameters_state_dict_and_float32_behaviour():
    net = nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(4, 4, 2, stride=2), nn.Linear(3, 3)
    )
    keys = list(net.state_dict())
    params = [id(p) for p in net.parameters()]
    x = torch.randn(1, 2, 2, 4, 4)
    expected = net[0](x)
    assert guard_bfloat16_convolutions(net) is net
    assert [type(m).__name__ for m in net] == ["Bfloat16SafeConv3d", "ReLU", "Bfloat16SafeConvTranspose2d", "Linear"]
    assert isinstance(net[0], nn.Conv3d) and list(net.state_dict()) == keys
    assert [id(p) for p in net.parameters()] == params
    torch.testing.assert_close(net[0](x), expected, rtol=0, atol=0)  # outside autocast: unchanged
    copy.deepcopy(net)  # the classes are importable module-level classes
    assert guard_bfloat16_convolutions(net) is net and type(net[0]).__name__ == "Bfloat16SafeConv3d"  # idempotent
