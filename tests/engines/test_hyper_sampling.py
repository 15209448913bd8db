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

import json

import pytest
import torch

from svreg_monai.engines import (
    FixedHyperSampler,
    ReferenceHyperMapping,
    RegistrationPrepareBatch,
    UniformHyperSampler,
    hyper_setting_name,
    save_hyper_setting,
)
from svreg_monai.networks.nets import codes_to_hyperparameters
from svreg_monai.priors import HyperparameterSpace


def test_uniform_sampler_per_sample_codes_in_bounds_and_reproducible():
    sampler = UniformHyperSampler(num_hyper=2, low=[0.0, 0.5], high=[1.0, 0.75], seed=3)
    codes = sampler(64, "cpu")
    assert codes.shape == (64, 2) and codes.dtype == torch.float32
    assert codes[:, 0].min() >= 0 and codes[:, 0].max() <= 1
    assert codes[:, 1].min() >= 0.5 and codes[:, 1].max() <= 0.75
    assert len({tuple(row) for row in codes.tolist()}) == 64  # every sample its own codes
    state = sampler.state_dict()
    again = sampler(4)
    sampler.load_state_dict(state)
    assert torch.equal(sampler(4), again)
    assert torch.equal(UniformHyperSampler(seed=3)(5), UniformHyperSampler(seed=3)(5))
    assert UniformHyperSampler().state_dict() == {}  # global generator: nothing to save


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_hyper": 0}, "num_hyper"),
        ({"low": 1.0, "high": 1.0}, "low must be < high"),
        ({"low": [0.0, 0.0, 0.0]}, "must hold 2 codes"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_uniform_sampler_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UniformHyperSampler(**kwargs)


def test_fixed_sampler_repeats_codes_and_validates_updates():
    sampler = FixedHyperSampler([0.05, 0.5])
    torch.testing.assert_close(sampler(3), torch.tensor([[0.05, 0.5]] * 3))
    sampler.codes = torch.tensor([[1.0, 0.0]])
    torch.testing.assert_close(sampler(1), torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="must hold 2 codes"):
        sampler.codes = [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="finite"):
        FixedHyperSampler([float("nan"), 0.0])
    with pytest.raises(ValueError, match="batch_size"):
        sampler(0)


def test_reference_mapping_matches_network_mapping_for_the_loss():
    mapping = ReferenceHyperMapping()
    codes = torch.tensor([[0.0, 0.0], [0.5, 0.2], [1.0, 1.0]])
    alpha, lambda_max = codes_to_hyperparameters(codes)
    out = mapping(codes)
    torch.testing.assert_close(out["prior_param"], alpha)  # alpha = 1 + 0.2 b
    torch.testing.assert_close(out["lambda_max"], lambda_max)  # lambda_max = 5 r
    torch.testing.assert_close(out["lambda_max"], torch.tensor([0.0, 1.0, 5.0]))
    gaussian = ReferenceHyperMapping(HyperparameterSpace("gaussian", (0.5, 4.5)))(codes)
    torch.testing.assert_close(gaussian["prior_param"], torch.tensor([0.5, 2.5, 4.5]))
    with pytest.raises(ValueError, match=r"trained range \[0, 1\]"):
        mapping(torch.tensor([[1.5, 0.0]]))


def test_to_codes_inverts_the_mapping_and_clamps_rounding():
    mapping = ReferenceHyperMapping(HyperparameterSpace("beta", (1.0, 1.2), (0.0, 5.0)))
    codes = mapping.to_codes(torch.tensor([1.0, 1.1, 1.2]), 2.5)
    torch.testing.assert_close(codes, torch.tensor([[0.0, 0.5], [0.5, 0.5], [1.0, 0.5]]))
    assert mapping.to_codes(1.2 + 1e-7, 5.0)[0, 0] == 1.0  # float rounding at the end
    extrapolated = mapping.to_codes(1.4, 0.0, extrapolate=True)
    torch.testing.assert_close(extrapolated, torch.tensor([[2.0, 0.0]]))


def test_setting_name_describe_and_saved_setting(tmp_path):
    mapping = ReferenceHyperMapping()
    assert mapping.setting_name([0.5, 0.4]) == "hyper_alpha=1.1_lambda_max=2"
    assert hyper_setting_name("inv_sigma2", 0.25, 4.5) == "hyper_inv_sigma2=0.25_lambda_max=4.5"
    path = save_hyper_setting(tmp_path / "out", [0.5, 0.4], mapping, extrapolate=False)
    assert json.loads(path.read_text()) == {
        "prior": "beta", "codes": [0.5, 0.4], "alpha": 1.1, "lambda_max": 2.0, "extrapolate": False
    }  # fmt: skip


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"prior": "laplace"}, r"prior .laplace. is not registered; registered priors: \[.beta., .gaussian.\]"),
        ({"prior_range": (0.5, 1.2)}, r"alpha_range must lie in \[1, inf\) for the beta prior"),
        ({"lambda_range": (2.0, 1.0)}, "low < high"),
        ({"prior": "gaussian", "prior_range": (-1.0, 1.0)}, r"inv_sigma2_range must lie in \[0, inf\)"),
        ({"lambda_range": (-1.0, 1.0)}, "non-negative"),
    ],
)
def test_space_rejects_bad_ranges(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReferenceHyperMapping(HyperparameterSpace(**kwargs))


def test_prepare_batch_passes_network_kwargs_and_per_sample_loss_targets():
    batch = {"moving": torch.rand(2, 1, 4, 4, 4), "fixed": torch.rand(2, 1, 4, 4, 4)}
    prepare = RegistrationPrepareBatch(
        hyper_sampler=UniformHyperSampler(seed=0), hyper_to_loss=ReferenceHyperMapping(),
        network_kwargs={"extrapolate": True},
    )  # fmt: skip
    _, targets, args, kwargs = prepare(batch, "cpu")
    codes = args[1]
    assert kwargs == {"extrapolate": True}
    assert not torch.equal(codes[0], codes[1])
    torch.testing.assert_close(targets["prior_param"], 1 + 0.2 * codes[:, 0])
    torch.testing.assert_close(targets["lambda_max"], 5 * codes[:, 1])
    with pytest.raises(ValueError, match="network_kwargs must be a mapping"):
        RegistrationPrepareBatch(network_kwargs=[("extrapolate", True)])
