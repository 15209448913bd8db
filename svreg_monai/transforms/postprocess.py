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
"""Post-processing of a registration network's output inside MONAI evaluators."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.transforms import Transform
from monai.utils import convert_to_tensor

from svreg_monai.flow.warping import RegistrationWarp, warp_labels
from svreg_monai.metrics.labels import labels_to_onehot
from svreg_monai.utils.keys import RegistrationKeys as K
from svreg_monai.utils.outputs import RegistrationOutput

__all__ = ["RegistrationPostprocessd", "to_label_tensor"]


def to_label_tensor(labels: torch.Tensor, name: str = "labels") -> torch.Tensor:
    """Return ``labels`` as a plain ``torch.long`` tensor, checking that float-stored labels hold integers."""
    labels = convert_to_tensor(labels, track_meta=False)
    if labels.is_floating_point():
        rounded = labels.round()
        if not bool(torch.isfinite(labels).all()) or not torch.equal(rounded, labels):
            raise ValueError(f"{name} must hold integer label values, got non-integer or non-finite values.")
        labels = rounded
    return labels.long()


class RegistrationPostprocessd(Transform):
    """Add the displacement, λ map, warped image and warped labels to an engine output dict.

    Use it as the ``postprocessing`` of a ``monai.engines.SupervisedEvaluator`` with ``decollate=False``: MONAI
    merges the batch and the engine output into one dict and stores the new keys in ``engine.state.output``.
    Added (batched, on the network's device):

    - ``ddf`` ``(B, N, *S)`` (voxels), ``weight`` ``(B, 1, *S)``, ``velocity``;
    - ``warped`` ``(B, C, *S)``: the moving image resampled onto the fixed grid;
    - ``warped_label`` ``(B, 1, *S)`` (long) when the moving labels are present;
    - ``warped_label_onehot`` / ``fixed_label_onehot`` ``(B, K, *S)`` over ``label_values`` when both label maps
      are present, for ``monai.handlers.MeanDice(include_background=True)``, and ``moving_label_onehot`` (the
      unregistered moving labels: the identity baseline Dice).

    Args:
        label_values: structures evaluated by Dice (one value, or a group of values, per channel); ``None`` skips
            the one-hot maps.
        label_interp: ``"linear"`` (one-hot linear interpolation + arg-max) or ``"nearest"`` label warping.
        image_interp: interpolation of the moving image.
        pred_key: key of the network output (a :class:`RegistrationOutput` or a DDF tensor).
    """

    def __init__(
        self,
        label_values: Sequence[int] | Sequence[Sequence[int]] | None = None,
        label_interp: str = "nearest",
        image_interp: str = "bilinear",
        pred_key: str = K.PRED,
    ) -> None:
        if label_interp not in ("linear", "nearest"):
            raise ValueError(f"label_interp must be 'linear' or 'nearest', got {label_interp!r}.")
        self.label_values = None if label_values is None else list(label_values)
        self.label_interp = label_interp
        self.warp = RegistrationWarp(mode=image_interp, padding_mode="zeros")
        self.pred_key = pred_key

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        if self.pred_key not in d:
            raise ValueError(f"no network output under {self.pred_key!r}; keys received: {sorted(d)}.")
        pred = d[self.pred_key]
        if isinstance(pred, RegistrationOutput):
            d[K.DDF], d[K.VELOCITY], d[K.WEIGHT] = pred.ddf, pred.velocity, pred.weight
        elif isinstance(pred, torch.Tensor):
            d[K.DDF] = pred
        else:
            raise ValueError(f"{self.pred_key!r} must be a RegistrationOutput or a DDF tensor, got {type(pred)}.")
        ddf = d[K.DDF]
        with torch.no_grad():
            moving = d[K.MOVING]
            moving = convert_to_tensor(moving, track_meta=False)
            d[K.WARPED] = self.warp(moving.to(device=ddf.device, dtype=ddf.dtype), ddf)
            if d.get(K.MOVING_LABEL) is not None:
                moving_label = to_label_tensor(d[K.MOVING_LABEL], "moving_label").to(ddf.device)
                d[K.WARPED_LABEL] = warp_labels(moving_label, ddf, mode=self.label_interp)
                if self.label_values is not None and d.get(K.FIXED_LABEL) is not None:
                    fixed_label = to_label_tensor(d[K.FIXED_LABEL], "fixed_label").to(ddf.device)
                    d[K.WARPED_LABEL_ONEHOT] = labels_to_onehot(d[K.WARPED_LABEL], self.label_values)
                    d[K.FIXED_LABEL_ONEHOT] = labels_to_onehot(fixed_label, self.label_values)
                    d[K.MOVING_LABEL_ONEHOT] = labels_to_onehot(moving_label, self.label_values)
        return d
