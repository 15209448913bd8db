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
"""MONAI cumulative metric wrapping the Jacobian regularity measures of :mod:`svreg_monai.metrics.functional`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction, look_up_option

from svreg_monai.metrics.functional import compute_jacobian_metrics

__all__ = ["JacobianMetric"]

_COLUMNS = ("ndp", "ndv", "sd_log_j")
_METRIC_NAMES = (*_COLUMNS, "all")


def _check_metric_name(metric_name: object) -> str:
    if not isinstance(metric_name, str) or metric_name.lower() not in _METRIC_NAMES:
        raise ValueError(f"metric_name must be one of {_METRIC_NAMES}, got {metric_name!r}.")
    return metric_name.lower()


class JacobianMetric(CumulativeIterationMetric):
    """Regularity of predicted displacement fields: NDP, NDV and SDlogJ per sample.

    Every call computes, for each sample of a batch of displacement fields ``y_pred`` ``(B, N, *S)`` (voxels,
    channel order = array axes) and an optional mask ``y`` ``(B, 1, *S)`` or ``(1, 1, *S)`` (nonzero = inside;
    ``None`` for the whole image), a row ``[ndp, ndv, sd_log_j]``:

    - ``ndp``: % of voxels whose central-difference Jacobian determinant is ``<= 0``
      (:func:`~svreg_monai.metrics.functional.negative_jacobian_percent`);
    - ``ndv``: non-diffeomorphic volume in % (Liu et al., IJCV 2024,
      :func:`~svreg_monai.metrics.functional.non_diffeomorphic_volume`);
    - ``sd_log_j``: standard deviation of ``log(det J)``
      (:func:`~svreg_monai.metrics.functional.sd_log_jacobian`).

    The one-voxel image border is excluded from all three. The rows are buffered; :meth:`aggregate` selects the
    column(s) named by ``metric_name`` and reduces them with MONAI's ``do_metric_reduction`` (NaN rows, from
    empty masks, are ignored). It can be attached to an ignite engine with ``monai.handlers.IgniteMetricHandler``,
    whose output transform should return ``(ddf, mask)`` or ``(ddf, None)``.

    Example::

        metric = JacobianMetric(metric_name="ndv")
        metric(ddf, mask)  # (B, 3) rows [ndp, ndv, sd_log_j]
        ndv = metric.aggregate()  # mean NDV in %
        everything = metric.aggregate(metric_name="all")  # (3,) means [ndp, ndv, sd_log_j]

    Args:
        metric_name: what :meth:`aggregate` returns: ``"ndp"``, ``"ndv"``, ``"sd_log_j"`` (one column, reduced as
            a one-channel metric), or ``"all"`` (the three columns, each reduced separately and kept apart).
        reduction: a :class:`monai.utils.MetricReduction` mode applied to non-NaN values. With ``"all"``,
            ``"mean"``/``"sum"`` reduce over the batch only (returning one value per column) and the channel-wise
            modes ``"mean_channel"``/``"sum_channel"`` are rejected, since they would mix different measures.
        get_not_nans: whether :meth:`aggregate` returns ``(metric, not_nans)`` like ``DiceMetric``.
        eps: lower clamp of the determinant before the logarithm of SDlogJ.
    """

    def __init__(
        self,
        metric_name: str = "all",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        eps: float = 1e-9,
    ) -> None:
        super().__init__()
        self.metric_name = _check_metric_name(metric_name)
        self.reduction = look_up_option(reduction, MetricReduction)
        self._check_reduction(self.metric_name, self.reduction)
        self.get_not_nans = get_not_nans
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a positive float, got {eps!r}.")
        self.eps = float(eps)

    @staticmethod
    def _check_reduction(metric_name: str, reduction: MetricReduction) -> None:
        if metric_name == "all" and reduction in (MetricReduction.MEAN_CHANNEL, MetricReduction.SUM_CHANNEL):
            raise ValueError(
                f"reduction {reduction.value!r} would mix ndp, ndv and sd_log_j; with metric_name='all' use one of "
                "'mean', 'sum', 'mean_batch', 'sum_batch' or 'none'."
            )

    def __call__(self, y_pred: Any, y: Any = None, **kwargs: Any) -> torch.Tensor | Sequence[torch.Tensor]:
        """Compute and buffer the rows of a batch; ``y`` may be ``None`` or a list of ``None`` (no mask).

        Args:
            y_pred: displacement fields, a ``(B, N, *S)`` tensor or a list of ``(N, *S)`` tensors.
            y: masks, a ``(B, 1, *S)`` tensor, a list of ``(1, *S)`` tensors, or ``None``.

        Returns:
            ``(B, 3)`` tensor with columns ``[ndp (%), ndv (%), sd_log_j]``.
        """
        if isinstance(y, (list, tuple)) and all(v is None for v in y):
            y = None
        return super().__call__(y_pred=y_pred, y=y, **kwargs)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """Return the ``(B, 3)`` rows ``[ndp, ndv, sd_log_j]`` of ``y_pred`` ``(B, N, *S)`` inside mask ``y``."""
        return compute_jacobian_metrics(y_pred, y, eps=self.eps)

    def aggregate(
        self, reduction: MetricReduction | str | None = None, metric_name: str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered rows.

        Args:
            reduction: overrides ``self.reduction`` for this call.
            metric_name: overrides ``self.metric_name`` for this call.

        Returns:
            The reduced metric (and ``not_nans`` when ``get_not_nans``). For one measure the buffer column is
            reduced as a ``(num_samples, 1)`` metric (``"mean"`` gives a one-element tensor as ``DiceMetric`` does,
            ``"none"`` ``(num_samples, 1)``).
            For ``"all"`` the last dimension indexes ``[ndp, ndv, sd_log_j]`` (``"mean"`` gives ``(3,)``,
            ``"none"`` ``(num_samples, 3)``).
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"the data to aggregate must be a PyTorch Tensor, got {type(data)}.")
        name = self.metric_name if metric_name is None else _check_metric_name(metric_name)
        red = self.reduction if reduction is None else look_up_option(reduction, MetricReduction)
        self._check_reduction(name, red)
        if name == "all":
            if red == MetricReduction.MEAN:
                red = MetricReduction.MEAN_BATCH
            elif red == MetricReduction.SUM:
                red = MetricReduction.SUM_BATCH
            f, not_nans = do_metric_reduction(data, red)
        else:
            k = _COLUMNS.index(name)
            f, not_nans = do_metric_reduction(data[:, k : k + 1], red)
        return (f, not_nans) if self.get_not_nans else f
