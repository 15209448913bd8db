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
"""Label grouping for MONAI :class:`~monai.metrics.DiceMetric` on warped label maps.

Registration papers report Dice over a chosen set of structures (e.g. the 30 volumes of interest of the IXI
benchmark) rather than over every label value. :func:`labels_to_onehot` turns an integer label map into the one-hot
channels of exactly those structures, in the given order, so that ``DiceMetric(include_background=True)`` returns
one column per structure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.metrics import compute_dice

from svreg_monai.utils.validation import check_tensor

__all__ = ["dice_per_structure", "labels_to_onehot"]


def labels_to_onehot(labels: torch.Tensor, label_values: Sequence[int] | Sequence[Sequence[int]]) -> torch.Tensor:
    """One-hot encode selected structures of an integer label map.

    Args:
        labels: ``(B, 1, *S)`` integer label map (any numeric dtype holding integers).
        label_values: one entry per output channel: a label value, or a sequence of values merged into one
            structure (e.g. left and right hippocampus). Values absent from ``labels`` give empty channels, which
            ``DiceMetric`` reports as NaN (``ignore_empty=True``).

    Returns:
        ``(B, K, *S)`` float one-hot tensor, ``K = len(label_values)``.

    Example::

        dice = DiceMetric(include_background=True, reduction="mean_batch")
        dice(labels_to_onehot(warped_labels, voi), labels_to_onehot(fixed_labels, voi))
    """
    check_tensor(labels, "labels", ndim=(4, 5), floating=False)
    if labels.shape[1] != 1:
        raise ValueError(f"labels must have shape (B, 1, *S), got {tuple(labels.shape)}.")
    if len(label_values) == 0:
        raise ValueError("label_values must name at least one structure, got an empty sequence.")
    channels = []
    for entry in label_values:
        values = [entry] if isinstance(entry, (int, float)) else list(entry)
        if not values or any(isinstance(v, bool) or float(v) != int(v) for v in values):
            raise ValueError(f"label_values entries must be integers or non-empty sequences of them, got {entry!r}.")
        values_t = torch.tensor([int(v) for v in values], device=labels.device, dtype=labels.dtype)
        channels.append(torch.isin(labels[:, 0], values_t))
    return torch.stack(channels, dim=1).float()


def dice_per_structure(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> list[float]:
    """Dice of each channel of two ``(1, K, *S)`` binary (one-hot) maps, optionally inside ``mask``.

    The one Dice of the package outside the engines' ``MeanDice`` handlers, with the same definition: MONAI's
    ``compute_dice`` with ``include_background=True, ignore_empty=True`` (NaN for a structure absent from
    ``target``), one channel at a time so that many structures on a large grid do not need ``K`` float copies.

    Args:
        pred: ``(1, K, *S)`` predicted maps (values > 0.5 count as inside).
        target: ``(1, K, *S)`` reference maps.
        mask: ``(*S)`` bool region, or None for the whole grid.

    Returns:
        ``K`` Dice values.
    """
    if pred.shape != target.shape or pred.ndim < 3 or pred.shape[0] != 1:
        raise ValueError(f"pred and target must both be (1, K, *S), got {tuple(pred.shape)} and {tuple(target.shape)}.")
    if mask is not None and tuple(mask.shape) != tuple(pred.shape[2:]):
        raise ValueError(f"mask must have the spatial shape {tuple(pred.shape[2:])}, got {tuple(mask.shape)}.")
    out = []
    for k in range(pred.shape[1]):
        p, t = pred[0, k] > 0.5, target[0, k] > 0.5
        if mask is not None:
            p, t = p & mask, t & mask
        out.append(float(compute_dice(p[None, None].float(), t[None, None].float(), include_background=True,
                                      ignore_empty=True)))  # fmt: skip
    return out
