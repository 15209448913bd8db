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
"""Per-sample access to an engine output, batched (a dict of ``(B, C, *S)`` tensors) or decollated (a list of dicts).

Metadata is read from the :class:`~monai.data.MetaTensor` of a key (``x.meta``) or, failing that, from the
``"<key>_meta_dict"`` entry of the output. In a batched output, list-valued metadata (``filename_or_obj``) holds one
entry per sample and the affine is ``(B, 4, 4)`` (``(B, 3, 3)`` in 2D); both are indexed by the sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor

from svreg_monai.utils.keys import RegistrationKeys

__all__ = ["SampleView", "engine_data", "sample_views"]

_BATCH_KEYS = (
    RegistrationKeys.FIXED,
    RegistrationKeys.MOVING,
    RegistrationKeys.DDF,
    RegistrationKeys.WARPED,
    RegistrationKeys.WEIGHT,
)


def engine_data(engine: Any) -> Any:
    """Return ``engine.state.output`` with the entries of ``engine.state.batch`` it lacks.

    In MONAI evaluators with ``decollate=False``, post-processing results are stored in the output while keys that
    came with the batch (``moving``, ``fixed`` and their metadata) stay in ``engine.state.batch``; handlers that
    need both see them merged here (the output wins on a shared key). Non-dict outputs are returned unchanged.
    """
    output = engine.state.output
    batch = getattr(engine.state, "batch", None)
    if isinstance(output, Mapping) and isinstance(batch, Mapping):
        return {**batch, **output}
    return output


def _plain(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    return convert_to_tensor(x, track_meta=False)


class SampleView:
    """Read-only view of one sample of an engine output.

    Args:
        source: the batched output dict, or one decollated sample dict.
        index: the sample index in a batched ``source``; None for a decollated sample.
        batch_size: ``B`` of a batched ``source``.
    """

    def __init__(self, source: Mapping[str, Any], index: int | None, batch_size: int = 1) -> None:
        self.source = source
        self.index = index
        self.batch_size = batch_size

    def get(self, key: str) -> torch.Tensor | None:
        """The sample's ``(C, *S)`` tensor of ``key`` (detached, plain tensor, original device), or None."""
        value = self.source.get(key)
        if not isinstance(value, torch.Tensor):
            return None
        value = _plain(value)
        if self.index is None:
            return value
        if value.ndim < 1 or value.shape[0] != self.batch_size:
            return None
        return value[self.index]

    def _meta_dict(self, key: str) -> Mapping[str, Any] | None:
        value = self.source.get(key)
        meta = getattr(value, "meta", None)
        if isinstance(meta, Mapping) and meta:
            return meta
        meta = self.source.get(f"{key}_meta_dict")
        return meta if isinstance(meta, Mapping) else None

    def meta(self, key: str, name: str) -> Any:
        """The sample's metadata entry ``name`` of ``key`` (e.g. ``"affine"``, ``"filename_or_obj"``), or None."""
        meta = self._meta_dict(key)
        if meta is None or name not in meta:
            return None
        value = meta[name]
        if self.index is None or value is None:
            return value
        if name == "affine":
            arr = value
            if isinstance(arr, (torch.Tensor, np.ndarray)) and arr.ndim == 3:
                return arr[self.index] if arr.shape[0] > self.index else None
            return arr
        if isinstance(value, (list, tuple)):
            return value[self.index] if len(value) == self.batch_size else None
        if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim >= 1 and value.shape[0] == self.batch_size:
            return value[self.index]
        return value


def sample_views(output: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[SampleView]:
    """Split an engine output into per-sample views.

    Args:
        output: a batched dict (tensors ``(B, C, *S)``), a list of per-sample dicts (tensors ``(C, *S)``), or None.

    Returns:
        one :class:`SampleView` per sample (empty for None or an output without image tensors).

    Raises:
        TypeError: when ``output`` is neither a mapping nor a sequence of mappings.
    """
    if output is None:
        return []
    if isinstance(output, Mapping):
        batch_size = None
        for key in _BATCH_KEYS:
            value = output.get(key)
            if isinstance(value, torch.Tensor) and value.ndim >= 3:
                batch_size = int(value.shape[0])
                break
        if batch_size is None:
            return []
        return [SampleView(output, b, batch_size) for b in range(batch_size)]
    if isinstance(output, Sequence) and not isinstance(output, (str, bytes)):
        views = []
        for i, item in enumerate(output):
            if not isinstance(item, Mapping):
                raise TypeError(f"a decollated engine output must hold dicts, got {type(item).__name__} at index {i}.")
            views.append(SampleView(item, None))
        return views
    raise TypeError(f"engine output must be a dict or a list of dicts, got {type(output).__name__}.")
