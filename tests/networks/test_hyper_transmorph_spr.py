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
import torch.nn as nn
from network_testing import flat_gradient

from svreg_monai.networks.layers import HyperConv, HyperLinear, ParameterGenerator
from svreg_monai.networks.nets import (
    HyperTransMorphTVFSPR,
    RegistrationOutput,
    TransMorphTVFSPR,
    codes_to_hyperparameters,
    hyperparameters_to_codes,
)

TINY = {"img_size": (32, 32, 32), "embed_dim": 12, "depths": (1, 1, 1), "num_heads": (2, 2, 2), "time_steps": 2}
SHAPE = (2, 1, 32, 32, 32)


def tiny(**kwargs) -> HyperTransMorphTVFSPR:
    return HyperTransMorphTVFSPR(**TINY, hidden=16, hyper_layers=3, **kwargs)


def perturb(module: nn.Module, std: float = 0.02) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, ParameterGenerator):
                (m.dense.weight if m.generator == "dense" else m.basis).normal_(0.0, std)


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(SHAPE, generator=g), torch.rand(SHAPE, generator=g)


def test_layers_hyperized_as_in_reference():
    net = tiny()
    names = net.hyper_layer_names
    # every convolution and the attention/MLP projections, but not the patch-merging projections
    assert "encoder.patch_embed.proj" in names and "encoder.layers.0.blocks.0.attn.qkv" in names
    assert "encoder.layers.2.blocks.0.mlp.linear2" in names and "weight_head.out.conv" in names
    assert "velocity_heads.1.conv" in names and "step_skips.0.conv" in names
    assert not any("reduction" in n for n in names)
    assert type(net.network.encoder.layers[0].downsample.reduction) is nn.Linear
    remaining = [
        n for n, m in net.network.named_modules() if type(m) in (nn.Conv3d, nn.Linear) and "generator" not in n
    ]
    assert remaining == ["encoder.layers.0.downsample.reduction", "encoder.layers.1.downsample.reduction"]
    assert all(isinstance(net.network.get_submodule(n), (HyperConv, HyperLinear)) for n in names)


def test_per_sample_codes_low_rank(images):
    torch.manual_seed(1)
    net = tiny(generator="low_rank", rank=2, base_weights=True).eval()
    backbone = TransMorphTVFSPR(**TINY).eval()
    moving, fixed = images
    codes = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    with torch.no_grad():
        # with base weights the model starts equal to TransMorphTVFSPR with the same weights, for every code
        backbone.load_state_dict(_plain_state(net))
        out = net(moving, fixed, codes)
        ref = backbone(moving, fixed)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        perturb(net)
        out = net(moving, fixed, codes)
        assert isinstance(out, RegistrationOutput)
        assert out.ddf.shape == (2, 3, 32, 32, 32) and out.velocity.shape == (2, 3, 16, 16, 16)
        assert out.weight.shape == (2, 1, 32, 32, 32)
        swapped = net(moving, fixed, codes.flip(0))
        assert not torch.allclose(out.ddf, swapped.ddf) and not torch.allclose(out.weight, swapped.weight)
        # per-sample codes in one batch equal separate calls
        for i in range(2):
            single = net(moving[i : i + 1], fixed[i : i + 1], codes[i : i + 1])
            for a, b in zip(single, out):
                torch.testing.assert_close(a[0], b[i], rtol=1e-4, atol=1e-5)


def test_per_sample_codes_channels_last_and_mixed_precision(images):
    moving, fixed = images
    codes = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    torch.manual_seed(1)
    net = tiny(generator="low_rank", rank=2, base_weights=True, channels_last=True).eval()
    perturb(net)
    with torch.no_grad():
        out = net(moving, fixed, codes)
        for i in range(2):  # the grouped per-sample convolutions also work on channels-last tensors
            single = net(moving[i : i + 1], fixed[i : i + 1], codes[i : i + 1])
            for a, b in zip(single, out):
                torch.testing.assert_close(a[0], b[i], rtol=1e-4, atol=1e-5)
        half = tiny(generator="low_rank", rank=2, base_weights=True, mixed_precision="bfloat16").eval()
        half.load_state_dict(net.state_dict())
        out16 = half(moving, fixed, codes)
    assert all(t.dtype == torch.float32 for t in out16)
    assert (out16.ddf - out.ddf).abs().mean() <= 0.02 * out.ddf.abs().mean()


def _plain_state(net: HyperTransMorphTVFSPR) -> dict[str, torch.Tensor]:
    """The ordinary state dict equivalent to a base-weight hyper model at initialisation."""
    state = {}
    for name, value in net.network.state_dict().items():
        for kind in ("weight", "bias"):
            marker = f".{kind}_generator.base"
            if name.endswith(marker):
                name = name[: -len(marker)] + f".{kind}"
        if "_generator." not in name:
            state[name] = value
    return state


def test_dense_reference_form_and_gradients(images):
    torch.manual_seed(2)
    net = tiny(generator="dense")  # no base: weights generated from scratch, as the reference
    moving, fixed = images
    out = net(moving, fixed, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert out.ddf.shape == (2, 3, 32, 32, 32)
    assert bool((out.weight > 0).all()) and bool((out.weight <= 1).all())
    (out.ddf.square().mean() + out.weight.mean()).backward()
    assert all(p.grad is not None for p in net.hypernet.parameters())
    assert net.hypernet.mlp[0].weight.grad.abs().sum() > 0
    generators = [p for n, p in net.named_parameters() if ".dense." in n]
    assert generators and all(p.grad is not None and p.grad.abs().sum() > 0 for p in generators)
    with torch.no_grad():
        a = net(moving[:1], fixed[:1], torch.tensor([[0.2, 0.3]]))
        b = net(moving[:1], fixed[:1], torch.tensor([[0.9, 0.6]]))
    assert not torch.allclose(a.ddf, b.ddf)


def test_code_validation(images):
    net = tiny(generator="low_rank", rank=1)
    moving, fixed = images
    with pytest.raises(ValueError, match=r"trained range \[0, 1\]"):
        net(moving, fixed, torch.tensor([[0.5, 1.5], [0.1, 0.1]]))
    with pytest.raises(ValueError, match="one row per sample"):
        net(moving, fixed, torch.rand(3, 2))
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        net(moving, fixed, torch.rand(2, 3))
    with torch.no_grad():
        out = net(moving[:1], fixed[:1], torch.tensor([-0.5, 1.5]), extrapolate=True)
    assert out.ddf.shape == (1, 3, 32, 32, 32)
    with pytest.raises(ValueError, match="use_checkpoint"):
        tiny(use_checkpoint=True)


def test_code_mapping():
    codes = torch.tensor([[0.0, 0.0], [0.5, 0.2], [1.0, 1.0]])
    alpha, lambda_max = codes_to_hyperparameters(codes)
    torch.testing.assert_close(alpha, torch.tensor([1.0, 1.1, 1.2]))
    torch.testing.assert_close(lambda_max, torch.tensor([0.0, 1.0, 5.0]))
    torch.testing.assert_close(hyperparameters_to_codes(alpha, lambda_max), codes)
    torch.testing.assert_close(hyperparameters_to_codes(1.05, 2.5), torch.tensor([[0.25, 0.5]]))
    with pytest.raises(ValueError, match=r"alpha must lie in the range the network was trained on, \[1, 1.2\]"):
        hyperparameters_to_codes(1.3, 1.0)
    with pytest.raises(ValueError, match="lambda_max must lie"):
        hyperparameters_to_codes(torch.tensor([1.0, 1.1]), torch.tensor([1.0, 6.0]))
    torch.testing.assert_close(hyperparameters_to_codes(1.4, 10.0, extrapolate=True), torch.tensor([[2.0, 2.0]]))
    with pytest.raises(ValueError, match="trained range"):
        codes_to_hyperparameters(torch.tensor([[1.1, 0.0]]))
    with pytest.raises(ValueError, match="alpha_range"):
        codes_to_hyperparameters(codes, alpha_range=(1.2, 1.0))
    alpha, lambda_max = codes_to_hyperparameters(torch.tensor([[2.0, -1.0]]), extrapolate=True)
    torch.testing.assert_close((alpha, lambda_max), (torch.tensor([1.4]), torch.tensor([-5.0])))


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, 1_610_688_984),  # dense generators, the reference's form (the reference itself: 1,611,830,520)
        ({"generator": "low_rank", "rank": 8, "base_weights": True}, 151_958_334),
    ],
)
def test_ixi_parameter_counts_on_meta_device(kwargs, expected):
    with torch.device("meta"):
        net = HyperTransMorphTVFSPR(img_size=(160, 192, 224), **kwargs)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_bfloat16_hyperizes_the_same_layers_and_gives_finite_gradients(images, one_thread):
    # 32^3 puts the first decoder block on a 2^3 map, where oneDNN's CPU bfloat16 weight gradients are garbage; the
    # guarded convolutions are hyperized like plain ones and the hyper convolutions are guarded too
    torch.manual_seed(0)
    ref = tiny(generator="low_rank", rank=2)
    perturb(ref)
    net = tiny(generator="low_rank", rank=2, mixed_precision="bfloat16")
    net.load_state_dict(ref.state_dict())
    assert net.hyper_layer_names == ref.hyper_layer_names
    moving, fixed = (x[:1] for x in images)
    codes = torch.tensor([[0.3, 0.7]])  # one code for the pair: plain (not grouped) hyper convolutions

    expected = flat_gradient(ref, moving, fixed, codes)
    for _ in range(2):
        g = flat_gradient(net, moving, fixed, codes)
        assert bool(torch.isfinite(g).all()) and (g - expected).norm() <= 0.25 * expected.norm()
