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
"""The prior objects, their registry and the hyperparameter space; a new prior defined here, in one class, trains
the plain and the hyper model."""

from __future__ import annotations

import math

import pytest
import torch

from svreg_monai.engines import ReferenceHyperMapping, UniformHyperSampler
from svreg_monai.losses import LocalNormalizedCrossCorrelationLoss, RegistrationLoss, SpatiallyVaryingRegularizationLoss
from svreg_monai.networks.nets import HyperTransMorphTVFSPR, TransMorphTVFSPR
from svreg_monai.priors import (
    PRIOR_REGISTRY,
    BetaPrior,
    GaussianPrior,
    HyperparameterSpace,
    WeightPrior,
    beta_prior,
    gaussian_prior,
    get_prior,
    register_prior,
)

TINY = {"img_size": (32, 32, 32), "embed_dim": 12, "depths": (1, 1, 1), "num_heads": (2, 2, 2), "time_steps": 2}


class ExponentialPrior(WeightPrior):
    """p(w) ∝ exp(rate · w) on (0, 1]: -log p(w) = -rate · w. Only this class is needed for a new prior."""

    name = "test_exponential"
    parameter = "rate"
    parameter_minimum = 0.0
    default_parameter = 0.05
    default_range = (0.0, 0.1)
    display_name = "rate"

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(logits), self.eps, 1.0)

    def negative_log_likelihood(self, weight: torch.Tensor, parameter: float | torch.Tensor) -> torch.Tensor:
        rate = torch.as_tensor(parameter, dtype=weight.dtype).reshape(-1)
        return -rate * weight.flatten(1).mean(dim=1)


@pytest.fixture
def exponential():
    register_prior(ExponentialPrior)
    yield ExponentialPrior.name
    del PRIOR_REGISTRY[ExponentialPrior.name]


@pytest.mark.parametrize(
    "prior,logits,expected",
    [
        (BetaPrior(), [-1e3, 0.0, 1e3], [1e-6, 0.5, 1.0]),
        (GaussianPrior(max_weight=5.0), [-1e3, 0.0, 1e3], [1e-6, math.log(2.0), 5.0]),
    ],
)
def test_activation_clamps_into_the_support_and_logits_invert_it(prior, logits, expected):
    x = torch.tensor(logits, dtype=torch.float64).reshape(1, 1, 3, 1, 1)
    torch.testing.assert_close(prior.activation(x).flatten(), torch.tensor(expected, dtype=torch.float64))
    w = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64).reshape(1, 1, 3, 1, 1)
    torch.testing.assert_close(prior.activation(prior.logits(w)), w)


def test_negative_log_likelihoods_are_the_functional_priors():
    w = torch.rand(2, 1, 4, 4, 4, dtype=torch.float64) * 0.9 + 0.05
    torch.testing.assert_close(BetaPrior().negative_log_likelihood(w, 1.2), beta_prior(w, 1.2))
    torch.testing.assert_close(BetaPrior().negative_log_likelihood(w, 1.2), -0.2 * torch.log(w).mean((1, 2, 3, 4)))
    g = GaussianPrior(mean=0.5)
    torch.testing.assert_close(g.negative_log_likelihood(w, 2.0), gaussian_prior(w, 2.0, mean=0.5))
    torch.testing.assert_close(g.negative_log_likelihood(w, 2.0), 2.0 * ((w - 0.5) ** 2).mean((1, 2, 3, 4)))


@pytest.mark.parametrize(
    "name,parameter,display",
    [("beta", "alpha", (1.05, 0.05)), ("gaussian", "inv_sigma2", (2.0, 2.0))],
)
def test_registry_names_parameters_and_display(name, parameter, display):
    prior = get_prior(name)
    assert prior.name == name and prior.parameter == parameter
    assert prior.to_display(display[0]) == pytest.approx(display[1])
    assert prior.from_display(display[1]) == pytest.approx(display[0])
    assert get_prior(prior) is prior
    with pytest.raises(ValueError, match=f"{parameter} must be >= "):
        prior.check_parameter(prior.parameter_minimum - 0.5)


def test_registry_errors(exponential):
    with pytest.raises(ValueError, match="is not registered; registered priors: .*test_exponential"):
        get_prior("laplace")
    with pytest.raises(ValueError, match="already registered"):
        register_prior(type("Other", (ExponentialPrior,), {}))
    with pytest.raises(ValueError, match="must set the class attributes"):
        register_prior(type("Nameless", (WeightPrior,), {}))
    with pytest.raises(ValueError, match="WeightPrior subclass"):
        register_prior(dict)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "space,codes,values",
    [
        (HyperparameterSpace("beta"), [[0.0, 0.0], [0.5, 0.2], [1.0, 1.0]], {"alpha": [1.0, 1.1, 1.2]}),
        (HyperparameterSpace("gaussian"), [[0.25, 0.5]], {"inv_sigma2": [0.5], "lambda_max": [2.5]}),
        (HyperparameterSpace("beta", (1.0, 1.1), (1.0, 2.0)), [[0.5, 0.5]], {"alpha": [1.05], "lambda_max": [1.5]}),
    ],
)
def test_space_maps_codes_to_values_and_back(space, codes, values):
    codes = torch.tensor(codes, dtype=torch.float64)
    out = space.to_values(codes)
    for name, expected in values.items():
        torch.testing.assert_close(out[name], torch.tensor(expected, dtype=torch.float64))
    back = space.to_codes(out[space.names[0]], out["lambda_max"])
    torch.testing.assert_close(back, codes)


def test_new_prior_in_one_class_trains_plain_and_hyper_models(exponential):
    torch.manual_seed(0)
    moving, fixed = torch.rand(2, 1, 32, 32, 32), torch.rand(2, 1, 32, 32, 32)
    targets = {"moving": moving, "fixed": fixed}

    def loss_for() -> RegistrationLoss:
        return RegistrationLoss(
            LocalNormalizedCrossCorrelationLoss(kernel_size=5),
            SpatiallyVaryingRegularizationLoss(prior=exponential, lambda_max=1.0),
        )

    # the plain model: the prior's activation in the head, its likelihood in the loss, its default parameter
    net, loss = TransMorphTVFSPR(**TINY, prior=exponential), loss_for()
    assert loss.regularization.prior_param == ExponentialPrior.default_parameter
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    values = []
    for _ in range(4):
        opt.zero_grad()
        out = net(moving, fixed)
        value = loss(out, targets)
        value.backward()
        opt.step()
        values.append(value.item())
    expected_prior = -0.05 * out.weight.detach().mean()
    torch.testing.assert_close(loss.last_terms["prior"], expected_prior, rtol=1e-5, atol=1e-7)
    assert all(math.isfinite(v) for v in values) and values[-1] < values[0]

    # the hyper model: codes -> (rate, lambda_max) over the prior's default range, per sample
    space = HyperparameterSpace(exponential)
    assert space.names == ("rate", "lambda_max") and space.prior_range == (0.0, 0.1)
    hyper = HyperTransMorphTVFSPR(**TINY, prior=exponential, space=space, hidden=8, hyper_layers=2,
                                  generator="low_rank", rank=1, base_weights=True)  # fmt: skip
    sampler, mapping, loss = UniformHyperSampler(seed=0), ReferenceHyperMapping(space), loss_for()
    opt = torch.optim.Adam(hyper.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in hyper.hypernet.state_dict().items()}
    for _ in range(3):
        codes = sampler(2)
        opt.zero_grad()
        out = hyper(moving, fixed, codes)
        loss_targets = {**targets, **mapping(codes)}
        value = loss(out, loss_targets)
        value.backward()
        opt.step()
        assert math.isfinite(value.item())
    rate = loss_targets["prior_param"]
    torch.testing.assert_close(rate, 0.1 * codes[:, 0])
    torch.testing.assert_close(
        loss.last_terms["prior"], (-rate * out.weight.detach().flatten(1).mean(1)).mean(), rtol=1e-5, atol=1e-7
    )
    assert any(not torch.equal(before[k], v) for k, v in hyper.hypernet.state_dict().items())
    from svreg_monai.apps import resolve_hyper_setting

    assert resolve_hyper_setting(mapping, {"rate": 0.05, "lambda_max": 2.5}) == pytest.approx([0.5, 0.5])
    assert mapping.setting_name([0.5, 0.5]) == "hyper_rate=0.05_lambda_max=2.5"


def test_tuning_searches_any_registered_prior(exponential):
    from svreg_monai.apps import params_to_config
    from svreg_monai.tuning import search_space

    first, second = search_space(exponential)
    assert (first.name, first.low, first.high) == ("rate", 0.0, 0.1) and second.name == "lambda_max"
    assert params_to_config({"rate": 0.02, "lambda_max": 1.0}) == {"rate": 0.02, "lambda_max": 1.0}
    assert params_to_config({"alpha_minus_one": 0.05}) == {"alpha": pytest.approx(1.05)}
