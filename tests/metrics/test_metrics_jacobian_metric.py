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
"""Tests of ``JacobianMetric``: buffering, reductions, ``get_not_nans``, list inputs and the ignite handler."""

from __future__ import annotations

import pytest
import torch

from svreg_monai.metrics import JacobianMetric, compute_jacobian_metrics


def _fold(scale: float = 1.0, size: int = 10) -> torch.Tensor:
    """``(1, 3, size^3)`` field folding on a block (``u_0 = -3 * scale * x_0`` on ``[3, 7)^3``)."""
    ddf = torch.zeros(1, 3, size, size, size)
    x0 = torch.arange(size, dtype=torch.float32).reshape(-1, 1, 1).expand(size, size, size)
    ddf[0, 0, 3:7, 3:7, 3:7] = -3.0 * scale * x0[3:7, 3:7, 3:7]
    return ddf


@pytest.fixture
def batches():
    identity = torch.zeros(1, 3, 10, 10, 10)
    return [torch.cat([identity, _fold(1.0)]), torch.cat([_fold(0.5), _fold(2.0)])]


def test_buffer_and_reductions(batches):
    metric = JacobianMetric()
    rows = [metric(b) for b in batches]
    assert rows[0].shape == (2, 3)
    expected = torch.cat([compute_jacobian_metrics(b) for b in batches])
    torch.testing.assert_close(metric.get_buffer(), expected)
    torch.testing.assert_close(metric.aggregate(), expected.mean(0))  # "all" + "mean": one value per column
    torch.testing.assert_close(metric.aggregate("sum"), expected.sum(0))
    torch.testing.assert_close(metric.aggregate("none"), expected)
    for k, name in enumerate(["ndp", "ndv", "sd_log_j"]):
        torch.testing.assert_close(metric.aggregate(metric_name=name), expected[:, k].mean().reshape(1))
        torch.testing.assert_close(metric.aggregate("mean_batch", metric_name=name), expected[:, k].mean(0, True))
        torch.testing.assert_close(metric.aggregate("mean_channel", name), expected[:, k])
        torch.testing.assert_close(metric.aggregate("none", name), expected[:, k : k + 1])
    assert expected[0].eq(0).all() and (expected[1:] > 0).all()  # per-sample values differ
    metric.reset()
    assert metric.get_buffer() is None


@pytest.mark.parametrize("metric_name,column", [("ndp", 0), ("NDV", 1), ("sd_log_j", 2)])
def test_metric_name_and_not_nans(metric_name, column):
    ddf = torch.cat([_fold(), _fold(), torch.zeros(1, 3, 10, 10, 10)])
    mask = torch.ones(3, 1, 10, 10, 10)
    mask[1, :, 1:-1, 1:-1, 1:-1] = 0  # only the cropped border: empty, so NaN and skipped
    metric = JacobianMetric(metric_name=metric_name, get_not_nans=True)
    metric(ddf, mask)
    value, not_nans = metric.aggregate()
    rows = compute_jacobian_metrics(ddf, mask)
    assert torch.isnan(rows[1]).all()
    torch.testing.assert_close(value, rows[[0, 2], column].mean().reshape(1))
    assert not_nans.item() == 2


def test_list_inputs_and_none_masks(batches):
    metric = JacobianMetric(metric_name="ndv", reduction="none")
    ddf = batches[1]
    metric(list(ddf), [None, None])  # decollated, no mask
    metric(list(ddf), list(torch.ones(2, 1, 10, 10, 10)))  # decollated masks (1, *S)
    metric(ddf, None)
    out = metric.aggregate()
    assert out.shape == (6, 1)
    torch.testing.assert_close(out, compute_jacobian_metrics(ddf)[:, 1:2].repeat(3, 1))


def test_2d_and_float64():
    ddf = torch.zeros(2, 2, 8, 9, dtype=torch.float64)
    ddf[1, 0, 2:6, 2:6] = -3.0 * torch.arange(2, 6, dtype=torch.float64).reshape(-1, 1)
    metric = JacobianMetric(reduction="none")
    out = metric(ddf)
    assert out.dtype == torch.float64 and out[0].eq(0).all() and (out[1] > 0).all()


@pytest.mark.parametrize("kwargs", [{"metric_name": "dice"}, {"metric_name": 3}, {"reduction": "median"}, {"eps": 0.0}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        JacobianMetric(**kwargs)


def test_all_rejects_channel_reduction():
    with pytest.raises(ValueError, match="mix"):
        JacobianMetric(metric_name="all", reduction="mean_channel")
    metric = JacobianMetric()
    metric(_fold())
    with pytest.raises(ValueError, match="mix"):
        metric.aggregate("sum_channel")


def test_invalid_ddf_through_metric():
    with pytest.raises(ValueError, match="channels"):
        JacobianMetric()(torch.zeros(1, 2, 6, 6, 6))


def test_ignite_handler(batches):
    ignite_engine = pytest.importorskip("ignite.engine")
    from monai.handlers import IgniteMetricHandler

    masks = [torch.ones(2, 1, 10, 10, 10), None]  # second batch: no mask

    def step(engine, batch):
        ddf, mask = batch
        return ddf, mask

    engine = ignite_engine.Engine(step)
    IgniteMetricHandler(metric_fn=JacobianMetric(metric_name="ndp")).attach(engine, "ndp")
    IgniteMetricHandler(metric_fn=JacobianMetric(metric_name="all")).attach(engine, "jacobian")
    engine.run(list(zip(batches, masks)), max_epochs=1)

    expected = torch.cat([compute_jacobian_metrics(b) for b in batches])
    assert engine.state.metrics["ndp"] == pytest.approx(expected[:, 0].mean().item())
    torch.testing.assert_close(engine.state.metrics["jacobian"], expected.mean(0))
    torch.testing.assert_close(engine.state.metric_details["ndp"], expected)
