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
"""The bundle's hyper setting (``hyper#...`` entries) and its grid search, in the application layer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from svreg_monai.apps import EvaluatorGridSearch, best_codes_layer, resolve_hyper_setting
from svreg_monai.engines import FixedHyperSampler, ReferenceHyperMapping


@pytest.mark.parametrize(
    "prior,hyper,expected",
    [
        ("beta", {"codes": [0.5, 0.2]}, [0.5, 0.2]),
        ("beta", {"alpha": 1.1, "lambda_max": 2.0}, [0.5, 0.4]),
        ("beta", {"codes": [0.25, 0.2], "lambda_max": 5.0}, [0.25, 1.0]),  # lambda_max replaces r
        ("beta", {"codes": [0.5, 0.2], "alpha": 1.0, "lambda_max": None}, [0.0, 0.2]),  # alpha replaces b
        ("beta", {"alpha": 1.3, "lambda_max": 6.0, "extrapolate": True}, [1.5, 1.2]),
        ("beta", {"codes": [1.1, -0.1], "extrapolate": "true"}, [1.1, -0.1]),
        ("gaussian", {"inv_sigma2": 1.5, "lambda_max": 0.5}, [0.75, 0.1]),
    ],
)
def test_resolve_codes_values_and_precedence(prior, hyper, expected):
    assert resolve_hyper_setting(ReferenceHyperMapping(prior), hyper) == pytest.approx(expected)


@pytest.mark.parametrize(
    "prior,hyper,match",
    [
        ("beta", {"alpha": 1.5, "lambda_max": 2.0}, r"hyper#alpha: alpha must lie .* got 1.5.*extrapolate true"),
        ("beta", {"alpha": 0.9, "lambda_max": 2.0}, r"alpha must lie .*got 0.9"),
        ("beta", {"alpha": 1.1, "lambda_max": 5.5}, r"lambda_max must lie in the range .* \[0, 5\], got 5.5"),
        ("beta", {"codes": [1.2, 0.5]}, r"hyper#codes must lie in the trained range \[0, 1\], got \[1.2"),
        ("beta", {"codes": [0.5, -0.01]}, r"hyper#codes must lie in the trained range"),
        ("beta", {"alpha": 1.1}, r"missing: \['lambda_max'\]"),
        ("beta", {}, r"missing: \['alpha', 'lambda_max'\]"),
        ("beta", {"inv_sigma2": 1.0, "lambda_max": 1.0}, "does not apply to the beta prior"),
        ("gaussian", {"alpha": 1.1, "lambda_max": 1.0}, "does not apply to the gaussian prior"),
        ("gaussian", {"inv_sigma2": 3.0, "lambda_max": 1.0}, r"inv_sigma2 must lie in the range .* \[0, 2\], got 3"),
        ("beta", {"lamda_max": 1.0}, r"unknown keys \['lamda_max'\]"),
        ("beta", {"codes": [0.5]}, r"hyper#codes must be two finite numbers \[b, r\], got \[0.5\]"),
        ("beta", {"codes": [0.5, 0.5], "extrapolate": "maybe"}, "hyper#extrapolate must be true or false"),
        ("beta", {"alpha": "x", "lambda_max": 1.0}, "hyper#alpha must be a finite number, got 'x'"),
    ],
)
def test_resolve_rejects_out_of_range_and_malformed_settings(prior, hyper, match):
    with pytest.raises(ValueError, match=match):
        resolve_hyper_setting(ReferenceHyperMapping(prior), hyper)


class _FakeEvaluator:
    """Computes metrics from the sampler's codes, as a MONAI evaluator whose prepare_batch uses the sampler."""

    def __init__(self, sampler, metric_names=("val_mean_dice", "val_ndv")):
        self.sampler, self.metric_names, self.runs = sampler, metric_names, 0
        self.state = SimpleNamespace(metrics={})

    def run(self):
        self.runs += 1
        b, r = self.sampler(1)[0].tolist()
        self.state.metrics = dict(zip(self.metric_names, (b + r, 10 * r)))


@pytest.mark.parametrize(
    "codes,expected",
    [
        ([0.25, 1.0], {"hyper#codes": [0.25, 1.0]}),
        ((1.08, 0.5), {"hyper#codes": [1.08, 0.5], "hyper#extrapolate": True}),
        ([0.5, -0.1], {"hyper#codes": [0.5, -0.1], "hyper#extrapolate": True}),
    ],
)
def test_best_codes_layer_is_a_usable_setting(codes, expected):
    layer = best_codes_layer(codes)
    assert layer == expected
    setting = {k.split("#")[1]: v for k, v in layer.items()}
    assert resolve_hyper_setting(ReferenceHyperMapping(), setting) == pytest.approx(list(codes))


def test_evaluator_grid_search_validates_selection_and_writes_the_best_codes_layer(tmp_path):
    sampler = FixedHyperSampler([0.0, 0.0])
    with pytest.raises(ValueError, match=r"select must be one of the recorded metrics \['dice', 'ndv'\]"):
        EvaluatorGridSearch(_FakeEvaluator(sampler), sampler, ReferenceHyperMapping(), "out", select="ndp")
    search = EvaluatorGridSearch(
        _FakeEvaluator(sampler), sampler, ReferenceHyperMapping(), tmp_path, step=0.5, ndv_limit=5.0, figure_codes=None
    )
    report = search.run()
    # dice = b + r, ndv = 10 r: the best admissible point has r = 0.5 and b = 1
    assert report["best"]["codes"] == [1.0, 0.5]
    assert json.loads((tmp_path / "best_codes.json").read_text()) == {"hyper#codes": [1.0, 0.5]}
    assert report["files"]["best_codes"] == str(tmp_path / "best_codes.json")
