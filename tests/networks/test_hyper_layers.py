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

import threading

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import UNet, VoxelMorphUNet

from svreg_monai.networks.layers import (
    HyperConditionedNetwork,
    HyperConv,
    HyperConvTranspose,
    HyperLinear,
    HyperNetwork,
    ParameterGenerator,
    current_hyper_embedding,
    hyper_embedding_context,
    hyperize,
)

GENERATORS = ("dense", "low_rank")
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def embeddings(batch: int, seed: int = 0) -> torch.Tensor:
    """Embeddings of random codes through a fresh hypernetwork."""
    torch.manual_seed(seed)
    return HyperNetwork(2, hidden=16, layers=2)(torch.rand(batch, 2))


def perturb(module: nn.Module, std: float = 0.05) -> None:
    """Make the code-dependent part of every generator non-zero."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, ParameterGenerator):
                (m.dense.weight if m.generator == "dense" else m.basis).normal_(0.0, std)


class TestHyperNetwork:
    def test_shape_and_reference_layout(self):
        net = HyperNetwork(2)
        out = net(torch.rand(4, 2))
        assert out.shape == (4, 96)
        assert bool((out >= 0).all())  # ReLU after every layer, as the reference
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(2, 96)] + [(96, 96)] * 5
        assert net(torch.rand(2)).shape == (1, 96)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="codes must have shape"):
            HyperNetwork(2)(torch.rand(4, 3))
        with pytest.raises(ValueError, match="layers"):
            HyperNetwork(2, layers=0)


class TestParameterGenerator:
    def test_parameter_counts(self):
        dense = ParameterGenerator(96, (4, 3, 3, 3), "dense")
        low = ParameterGenerator(96, (4, 3, 3, 3), "low_rank", rank=5, base=torch.zeros(4, 3, 3, 3))
        assert sum(p.numel() for p in dense.parameters()) == 96 * 108
        assert sum(p.numel() for p in low.parameters()) == 5 * 108 + 5 * 96 + 108

    def test_base_is_reproduced_for_any_embedding(self):
        base = torch.randn(6, 2)
        for gen in GENERATORS:
            g = ParameterGenerator(16, (6, 2), gen, rank=3, base=base)
            out = g(embeddings(4))
            assert out.shape == (4, 6, 2)
            assert torch.equal(out, base.expand(4, 6, 2))

    def test_invalid(self):
        with pytest.raises(ValueError, match="generator must be one of"):
            ParameterGenerator(16, (2,), "sparse")
        with pytest.raises(ValueError, match="base must have shape"):
            ParameterGenerator(16, (2,), base=torch.zeros(3))


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize(
    "spatial_dims,kwargs",
    [
        (1, {"stride": 2, "padding": 1}),
        (2, {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2), "groups": 2}),
        (3, {"stride": 2, "padding": 1}),
    ],
)
def test_hyper_conv_matches_ordinary_conv(spatial_dims, kwargs, generator):
    torch.manual_seed(1)
    conv = HyperConv(spatial_dims, 4, 6, 3, embedding_dim=16, generator=generator, rank=3, **kwargs)
    x = torch.randn(3, 4, *([7] * spatial_dims))
    emb = embeddings(3)
    # a constant code: the same as an ordinary convolution with the generated weights
    weight, bias = conv.weight_generator(emb[:1])[0], conv.bias_generator(emb[:1])[0]
    expected = CONV[spatial_dims](x, weight, bias, **kwargs)
    torch.testing.assert_close(conv(x, emb[:1]), expected)
    torch.testing.assert_close(conv(x, emb[:1].expand(3, -1)), expected, rtol=1e-5, atol=1e-5)
    # per-sample codes in one batch: the same as separate calls
    separate = torch.cat([conv(x[i : i + 1], emb[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(conv(x, emb), separate, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(separate[0], CONV[spatial_dims](x[:1], *_params(conv, emb[1:2]), **kwargs)[0])


def _params(layer: nn.Module, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    bias = None if layer.bias_generator is None else layer.bias_generator(emb)[0]
    return layer.weight_generator(emb)[0], bias


def test_hyper_conv_padding_modes_and_windows():
    torch.manual_seed(2)
    emb = embeddings(2)
    for padding, mode in (("same", "reflect"), (1, "circular"), ("valid", "zeros")):
        conv = HyperConv(2, 3, 5, 3, embedding_dim=16, padding=padding, padding_mode=mode, bias=False)
        ref = nn.Conv2d(3, 5, 3, padding=padding, padding_mode=mode, bias=False)
        x = torch.randn(2, 3, 6, 6)
        with torch.no_grad():
            ref.weight.copy_(conv.weight_generator(emb[1:2])[0])
        torch.testing.assert_close(conv(x, emb)[1:], ref(x[1:]), rtol=1e-5, atol=1e-5)
    # a leading dimension k * B with the sample index outermost
    x = torch.randn(2 * 3, 3, 6, 6)
    separate = torch.cat([conv(x[3 * i : 3 * i + 3], emb[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(conv(x, emb), separate, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("generator", GENERATORS)
def test_hyper_conv_transpose(generator):
    torch.manual_seed(3)
    conv = HyperConvTranspose(2, 4, 6, 3, embedding_dim=16, stride=2, padding=1, output_padding=1, groups=2)
    x = torch.randn(3, 4, 5, 5)
    emb = embeddings(3)
    expected = CONV_T[2](x[1:2], *_params(conv, emb[1:2]), 2, 1, 1, 2)
    out = conv(x, emb)
    assert out.shape == (3, 6, 10, 10)
    torch.testing.assert_close(out[1:2], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("generator", GENERATORS)
def test_hyper_linear(generator):
    torch.manual_seed(4)
    lin = HyperLinear(5, 7, embedding_dim=16, generator=generator, rank=2)
    emb = embeddings(3)
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(lin(x, emb[:1]), F.linear(x, *_params(lin, emb[:1])))
    separate = torch.cat([lin(x[i : i + 1], emb[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(lin(x, emb), separate, rtol=1e-5, atol=1e-5)
    # Swin windows: (B * num_windows, N, C) with the sample outermost
    xw = torch.randn(3 * 2, 4, 5)
    separate = torch.cat([lin(xw[2 * i : 2 * i + 2], emb[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(lin(xw, emb), separate, rtol=1e-5, atol=1e-5)
    no_bias = HyperLinear(5, 7, embedding_dim=16, bias=False, generator=generator)
    assert no_bias.bias_generator is None and no_bias(x, emb).shape == (3, 4, 7)


def test_layer_errors():
    conv = HyperConv(2, 3, 4, 3, embedding_dim=16)
    with pytest.raises(RuntimeError, match="without an embedding"):
        conv(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="multiple of the embedding"):
        conv(torch.randn(3, 3, 5, 5), embeddings(2))
    with pytest.raises(ValueError, match=r"embedding must have shape \(B, 16\)"):
        conv(torch.randn(2, 3, 5, 5), torch.randn(2, 8))
    with pytest.raises(ValueError, match="3 channels"):
        conv(torch.randn(2, 4, 5, 5), embeddings(2))
    with pytest.raises(ValueError, match="spatial_dims"):
        HyperConv(4, 3, 4, 3)
    with pytest.raises(ValueError, match="padding_mode"):
        HyperConvTranspose(2, 3, 4, 3, padding_mode="reflect")


def test_context_nesting_and_threads():
    a, b = torch.zeros(1, 4), torch.ones(1, 4)
    with hyper_embedding_context(7, a):
        with hyper_embedding_context(7, b):
            assert current_hyper_embedding(7) is b
        assert current_hyper_embedding(7) is a
        seen = []
        thread = threading.Thread(target=lambda: seen.append(current_hyper_embedding(7)))
        thread.start()
        thread.join()
        assert seen == [None]  # a context is local to its thread
    assert current_hyper_embedding(7) is None


class SmallNet(nn.Module):
    """Convolution, pooling and a linear head, to hyperize a network that contains nn.Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.head = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(x).flatten(2).transpose(1, 2)
        tokens = self.attn(tokens, tokens, tokens)[0]
        return self.head(tokens.mean(1))


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: UNet(2, 2, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1), (3, 2, 16, 16)),
        (lambda: VoxelMorphUNet(3, 2, 4, channels=(4, 4, 4, 4), final_conv_channels=(4,)), (3, 2, 8, 8, 8)),
        (SmallNet, (3, 2, 6, 6)),
    ],
)
def test_hyperize_reproduces_network_at_init(make, shape, generator):
    torch.manual_seed(5)
    net = make().eval()
    hyper = hyperize(net, generator=generator, rank=2, hidden=16, layers=2).eval()
    x = torch.randn(shape)
    codes = torch.rand(3, 2)
    with torch.no_grad():
        torch.testing.assert_close(hyper(x, hyper=codes), net(x), rtol=1e-4, atol=1e-5)
    assert net is not hyper.network  # a copy by default
    kinds = {type(m) for m in hyper.network.modules()}
    assert nn.Conv2d not in kinds and nn.Conv3d not in kinds
    if isinstance(net, UNet):
        assert HyperConvTranspose in kinds
    if isinstance(net, SmallNet):  # out_proj is read directly by nn.MultiheadAttention: left as is
        assert isinstance(hyper.network.head[0], HyperLinear) and isinstance(hyper.network.head[2], HyperLinear)
        assert type(hyper.network.attn.out_proj) is not HyperLinear
    # per-sample codes equal separate calls once the generators are non-zero
    perturb(hyper)
    with torch.no_grad():
        together = hyper(x, hyper=codes)
        separate = torch.cat([hyper(x[i : i + 1], hyper=codes[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, separate, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(together[0], hyper(x[:1], hyper=codes[1:2])[0])


@pytest.mark.parametrize("generator", GENERATORS)
def test_load_base_state_dict_warm_starts_from_a_trained_plain_network(generator):
    torch.manual_seed(7)
    plain = UNet(2, 2, 3, channels=(4, 8), strides=(2,), num_res_units=1, norm="batch").eval()
    hyper = hyperize(UNet(2, 2, 3, channels=(4, 8), strides=(2,), num_res_units=1, norm="batch"), generator=generator)
    perturb(hyper)  # a hyper network that has moved away from its own initial weights
    with torch.no_grad():  # and a "trained" plain network, buffers (batch-norm statistics) included
        for p in plain.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for name, b in plain.named_buffers():
            if "running" in name:
                b.add_(0.5)
    assert hyper.load_base_state_dict(plain.state_dict()) is hyper
    hyper.eval()
    x, codes = torch.randn(2, 2, 16, 16), torch.rand(4, 2)
    with torch.no_grad():
        expected = plain(x)
        for code in codes:
            torch.testing.assert_close(hyper(x, hyper=code[None]), expected, rtol=1e-4, atol=1e-5)
    # a state dict of another network is refused with the offending names
    other = UNet(2, 2, 3, channels=(4, 16), strides=(2,), num_res_units=1, norm="batch").state_dict()
    with pytest.raises(ValueError, match="wrong shapes"):
        hyper.load_base_state_dict(other)
    partial = dict(plain.state_dict())
    name = next(iter(partial))
    del partial[name]
    with pytest.raises(ValueError, match="missing"):
        hyper.load_base_state_dict(partial)
    with pytest.raises(ValueError, match="unexpected"):
        hyper.load_base_state_dict({**plain.state_dict(), "extra.weight": torch.zeros(1)})
    without_base = hyperize(SmallNet(), generator=generator, base_weights=False)
    with pytest.raises(ValueError, match="base_weights=True"):
        without_base.load_base_state_dict(SmallNet().state_dict())


@pytest.mark.parametrize("generator", GENERATORS)
def test_gradients_reach_generators_and_hypernetwork(generator):
    torch.manual_seed(6)
    net = hyperize(SmallNet(), generator=generator, rank=2, hidden=16, layers=2)
    net(torch.randn(2, 2, 6, 6), hyper=torch.rand(2, 2)).square().sum().backward()
    for name, p in net.named_parameters():
        if ".dense." in name or name.endswith("basis") or name.endswith("base"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the reference's form (no base): the hypernetwork is trained from the first step
    net = hyperize(SmallNet(), generator=generator, rank=2, hidden=16, layers=2, base_weights=False)
    net(torch.randn(2, 2, 6, 6), hyper=torch.rand(2, 2)).square().sum().backward()
    for name, p in net.hypernet.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_hyperize_selection_and_errors():
    net = SmallNet()
    only_head = hyperize(net, include="head.*")
    assert only_head.hyper_layer_names == ("head.0", "head.2")
    no_head = hyperize(net, exclude=lambda name, m: name.startswith("head"))
    assert no_head.hyper_layer_names == ("conv",)
    with pytest.raises(ValueError, match="no layer was converted"):
        hyperize(net, include="nothing")
    with pytest.raises(ValueError, match="generator must be one of"):
        hyperize(net, generator="full")
    wrapped = HyperConditionedNetwork(nn.Linear(3, 2), hidden=8, layers=1)  # a bare layer becomes a hyper layer
    assert isinstance(wrapped.network, HyperLinear)
    assert wrapped(torch.randn(4, 3), hyper=torch.rand(4, 2)).shape == (4, 2)
    with pytest.raises(ValueError, match="codes must have shape"):
        wrapped(torch.randn(4, 3), hyper=torch.rand(4, 3))
    with pytest.raises(ValueError, match="multiple of the embedding"):
        wrapped(torch.randn(4, 3), hyper=torch.rand(3, 2))
    # shared modules are converted once and stay shared
    shared = nn.Linear(3, 3)
    seq = hyperize(nn.Sequential(shared, nn.ReLU(), shared), hidden=8, layers=1)
    assert isinstance(seq.network[0], HyperLinear) and seq.network[0] is seq.network[2]
    assert seq.hyper_layer_names == ("0",)
