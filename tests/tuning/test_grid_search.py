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

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from svreg_monai.engines import FixedHyperSampler, ReferenceHyperMapping
from svreg_monai.inferers import RegistrationInferer
from svreg_monai.networks.nets import HyperTransMorphTVFSPR
from svreg_monai.tuning import (
    code_grid,
    evaluator_objective,
    grid_search,
    hyper_grid_outputs,
    save_grid_search,
)


@pytest.mark.parametrize(
    "start,stop,step,expected",
    [
        (0.0, 1.0, 0.25, [0.0, 0.25, 0.5, 0.75, 1.0]),
        (0.0, 1.0, 0.5, [0.0, 0.5, 1.0]),
        (0.0, 1.0, 0.3, [0.0, 0.3, 0.6, 0.9]),
        (0.2, 0.2, 0.1, [0.2]),
    ],
)
def test_code_grid(start, stop, step, expected):
    np.testing.assert_array_equal(code_grid(start, stop, step), expected)


def test_code_grid_reference_grid_has_55_exact_values():
    grid = code_grid(0.0, 1.08, 0.02)
    assert grid.size == 55 and grid[-1] == 1.08 and grid[1] == 0.02


@pytest.mark.parametrize(
    "args,match", [((0, 1, 0), "step must be > 0"), ((1, 0, 0.1), "stop must be >= start"), ((0, 1, np.nan), "finite")]
)
def test_code_grid_rejects_bad_ranges(args, match):
    with pytest.raises(ValueError, match=match):
        code_grid(*args)


def _objective(codes):
    b, r = codes
    return {"dice": 1.0 - (b - 0.5) ** 2 - (r - 0.75) ** 2, "ndv": 1.0 if r < 0.3 else 0.0}


def test_grid_search_landscape_best_and_ndv_limit():
    grid = code_grid(0, 1, 0.25)
    result = grid_search(_objective, grid, grid, ReferenceHyperMapping())
    assert set(result.metrics) == {"dice", "ndv"} and result.metrics["dice"].shape == (5, 5)
    np.testing.assert_allclose(result.prior_values, 1 + 0.2 * grid)
    np.testing.assert_allclose(result.lambda_values, 5 * grid)
    np.testing.assert_allclose(result.row_values, 0.2 * grid)  # alpha - 1 on the heatmap rows
    best = result.best("dice")
    assert best["codes"] == [0.5, 0.75] and best["index"] == [2, 3]
    assert best["alpha"] == pytest.approx(1.1) and best["lambda_max"] == pytest.approx(3.75)
    assert result.best("ndv", mode="min")["ndv"] == 0.0
    result.metrics["dice"][:, 3:] = np.nan  # the best points are gone: next best within NDV <= 0
    constrained = result.best("dice", ndv_limit=0.0)
    assert constrained["codes"] == [0.5, 0.5] and constrained["ndv"] == 0.0
    assert len(result.rows()) == 25 and result.rows()[0] == pytest.approx(
        {"b_code": 0.0, "r_code": 0.0, "alpha": 1.0, "lambda_max": 0.0, "dice": 1 - 0.25 - 0.5625, "ndv": 1.0}
    )


def test_grid_search_checks_range_and_metric_names(tmp_path):
    with pytest.raises(ValueError, match=r"b_codes must lie in the trained range \[0, 1\], got \[0, 1.08\]"):
        grid_search(_objective, code_grid(0, 1.08, 0.02), [0.5])
    result = grid_search(_objective, [1.08], [0.5], extrapolate=True)
    assert result.prior_values[0] == pytest.approx(1.216)
    files = save_grid_search(result, tmp_path, result.best(), heatmaps=False)
    assert json.loads(files["json"].read_text())["best"]["codes"] == [1.08, 0.5]
    calls = iter([{"dice": 1.0}, {"ndv": 0.0}])
    with pytest.raises(ValueError, match=r"returned the metrics \['ndv'\] at codes \(0, 1\), but \['dice'\] before"):
        grid_search(lambda c: next(calls), [0.0], [0.0, 1.0])


def test_save_grid_search_writes_npz_csv_json_and_heatmaps(tmp_path):
    pytest.importorskip("matplotlib")
    grid = code_grid(0, 1, 0.5)
    result = grid_search(_objective, grid, grid)
    best = result.best("dice")
    files = save_grid_search(result, tmp_path / "grid", best, report={"select": "dice"})
    assert {p.name for p in (tmp_path / "grid").iterdir()} == {
        "grid_search.npz", "grid_search.csv", "grid_search.json", "dice.png", "ndv.png"
    }  # fmt: skip
    with np.load(files["npz"]) as data:
        assert set(data.files) == {"b_codes", "r_codes", "alpha", "lambda_max", "dice", "ndv"}
        np.testing.assert_array_equal(data["dice"], result.metrics["dice"])
    with open(files["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and list(rows[0]) == ["b_code", "r_code", "alpha", "lambda_max", "dice", "ndv"]
    report = json.loads(files["json"].read_text())
    assert report["best"]["codes"] == best["codes"] and report["select"] == "dice" and report["alpha"] == [1, 1.1, 1.2]


class _FakeEvaluator:
    """Computes metrics from the sampler's codes, as a MONAI evaluator whose prepare_batch uses the sampler."""

    def __init__(self, sampler, metric_names=("val_mean_dice", "val_ndv")):
        self.sampler, self.metric_names, self.runs = sampler, metric_names, 0
        self.state = SimpleNamespace(metrics={})

    def run(self):
        self.runs += 1
        b, r = self.sampler(1)[0].tolist()
        self.state.metrics = dict(zip(self.metric_names, (b + r, 10 * r)))


def test_evaluator_objective_sets_codes_and_reads_metrics():
    sampler = FixedHyperSampler([0.0, 0.0])
    evaluator = _FakeEvaluator(sampler)
    objective = evaluator_objective(evaluator, sampler)
    assert objective([0.25, 0.5]) == pytest.approx({"dice": 0.75, "ndv": 5.0})
    assert evaluator.runs == 1 and sampler.codes.tolist() == [0.25, 0.5]
    with pytest.raises(ValueError, match=r"computed no \['val_ndv'\]; it computed \['val_mean_dice', 'x'\]"):
        evaluator_objective(_FakeEvaluator(sampler, ("val_mean_dice", "x")), sampler)([0.0, 0.0])


def test_hyper_grid_outputs_through_the_inferer_differ_per_setting():
    torch.manual_seed(0)
    net = HyperTransMorphTVFSPR(
        img_size=(32, 32), spatial_dims=2, embed_dim=12, depths=(1, 1, 1), num_heads=(2, 2, 2), time_steps=2,
        generator="low_rank", rank=2, hidden=16, hyper_layers=2,
    )  # fmt: skip
    moving, fixed = torch.rand(1, 1, 24, 28), torch.rand(1, 1, 24, 28)
    inferer = RegistrationInferer(spatial_size=(32, 32))
    weights, ddfs = hyper_grid_outputs(net, moving, fixed, [0.0, 1.0], [0.0, 0.5, 1.0], inferer=inferer)
    assert len(weights) == 2 and all(len(row) == 3 for row in weights)
    assert weights[0][0].shape == (1, 24, 28) and ddfs[1][2].shape == (2, 24, 28)  # cropped back to the input
    assert not torch.equal(weights[0][0], weights[1][2])
    with pytest.raises(ValueError, match="one pair"):
        hyper_grid_outputs(net, torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32), [0.0], [0.0])
