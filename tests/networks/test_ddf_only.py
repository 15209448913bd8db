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
"""DDFOnly's checkpoint transparency: state dicts of the inner network load into the wrapper and back."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
from monai.networks.utils import copy_model_state
from monai.utils import set_determinism

from svreg_monai.networks import DDFOnly, TransMorphTVFSPR

TINY = {"img_size": (32, 32, 32), "embed_dim": 12, "depths": (1, 1), "num_heads": (2, 2), "time_steps": 2}


def tiny(seed: int) -> TransMorphTVFSPR:
    torch.manual_seed(seed)
    net = TransMorphTVFSPR(**TINY)
    with torch.no_grad():
        for head in net.velocity_heads:
            head.conv.weight.normal_(0.0, 0.05)
    return net.eval()


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_state_dict_has_the_inner_keys_and_metadata():
    net = tiny(0)
    wrapper = DDFOnly(net)
    state = wrapper.state_dict()
    assert list(state) == list(net.state_dict())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert state._metadata == net.state_dict()._metadata
    assert [n for n, _ in wrapper.named_parameters()][0].startswith("net.")  # parameter names keep the prefix
    # nested in another module the keys get that module's prefix only
    outer = nn.Sequential(DDFOnly(tiny(0)))
    assert list(outer.state_dict()) == [f"0.{k}" for k in net.state_dict()]


@pytest.mark.parametrize("prefixed", [False, True])
def test_load_inner_or_prefixed_state_dict_strictly(prefixed):
    source, target = tiny(0), DDFOnly(tiny(1))
    assert not same_weights(source, target.net)
    state = source.state_dict()
    if prefixed:
        state = {f"net.{k}": v for k, v in state.items()}
    assert not target.load_state_dict(state).missing_keys
    assert same_weights(source, target.net)
    image = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(image), source(image[:, :1], image[:, 1:]).ddf)


def test_the_bare_network_loads_the_wrapper_state_dict():
    wrapper, net = DDFOnly(tiny(0)), tiny(1)
    net.load_state_dict(wrapper.state_dict())
    assert same_weights(net, wrapper.net)


def test_strict_loading_still_reports_missing_and_unexpected_keys():
    state = tiny(0).state_dict()
    first = next(iter(state))
    partial = {k: v for k, v in state.items() if k != first}
    with pytest.raises(RuntimeError, match=rf"Missing key\(s\).*net\.{first}"):
        DDFOnly(tiny(1)).load_state_dict(partial)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*extra"):
        DDFOnly(tiny(1)).load_state_dict({**state, "extra": torch.zeros(1)})


def test_monai_copy_model_state_and_ignite_loading():
    """``monai.bundle.load`` uses ``copy_model_state``; ``ckpt_export``/``onnx_export`` use Ignite's loader."""
    from ignite.handlers import Checkpoint

    source = tiny(0)
    target = DDFOnly(tiny(1))
    _, updated, unchanged = copy_model_state(target, source.state_dict())
    assert len(updated) == len(source.state_dict()) and not unchanged
    assert same_weights(source, target.net)

    target = DDFOnly(tiny(1))
    Checkpoint.load_objects(to_load={"": target}, checkpoint=copy.deepcopy(source.state_dict()))
    assert same_weights(source, target.net)


def test_deepcopy_pickle_and_nested_wrappers_keep_the_behaviour():
    wrapper = DDFOnly(tiny(0))
    buffer = io.BytesIO()
    torch.save(wrapper, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(wrapper), torch.load(buffer, weights_only=False)):
        assert list(clone.state_dict()) == list(wrapper.net.state_dict())
        clone.load_state_dict(tiny(2).state_dict())
        assert same_weights(clone.net, tiny(2))
    double = DDFOnly(DDFOnly(tiny(1)))
    assert list(double.state_dict()) == list(wrapper.net.state_dict())
    double.load_state_dict(wrapper.state_dict())
    assert same_weights(double.net.net, wrapper.net)


def test_trace_of_the_wrapper_matches_eager():
    set_determinism(seed=0)
    wrapper = DDFOnly(tiny(0)).eval()
    image = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, image, check_trace=False)
        torch.testing.assert_close(traced(image), wrapper(image), rtol=0, atol=1e-5)
    set_determinism(seed=None)


def test_rejects_non_modules():
    with pytest.raises(TypeError, match="torch.nn.Module, got int"):
        DDFOnly(3)  # type: ignore[arg-type]


def test_options_of_the_wrapped_network_are_named():
    # `--network_def#img_size ...` on an inference config whose network_def is this wrapper
    with pytest.raises(TypeError, match=r"DDFOnly only wraps `net`; got \['img_size'\].*network given as `net`"):
        DDFOnly(nn.Identity(), img_size=(64, 64, 64))
