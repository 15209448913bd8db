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
"""Batch preparation for MONAI ``SupervisedTrainer`` / ``SupervisedEvaluator`` running registration networks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.engines.utils import PrepareBatch

from svreg_monai.utils.io import describe_source
from svreg_monai.utils.keys import RegistrationKeys

__all__ = ["RegistrationPrepareBatch"]


class RegistrationPrepareBatch(PrepareBatch):
    """Turn a collated registration batch into ``(inputs, targets, args, kwargs)`` for MONAI engines.

    MONAI's ``SupervisedTrainer`` calls ``inferer(inputs, network, *args)`` and ``loss_function(pred, targets)``.
    This returns ``inputs = moving``, ``args = (fixed,)`` (plus the hyperparameter codes for hyper-conditioned
    networks), so the network is called as ``network(moving, fixed[, hyper])``, and ``targets`` a dict with the
    moving and fixed images (and the label maps, codes and per-sample loss weights when present) for
    :class:`~svreg_monai.losses.RegistrationLoss`. No engine code is replaced: the stock ``_iteration`` runs.

    Args:
        moving_key: batch key of the moving image ``(B, C, *S)``.
        fixed_key: batch key of the fixed image ``(B, C, *S)``.
        label_keys: batch keys copied into ``targets`` when present (label maps).
        hyper_sampler: for hyper-conditioned networks, ``hyper_sampler(batch_size, device) -> (B, H)`` codes drawn
            per iteration (training) or fixed (evaluation); ``None`` for ordinary networks. When the batch itself
            holds ``hyper_key``, those codes are used instead.
        hyper_to_loss: maps the ``(B, H)`` codes to keyword tensors of the loss, e.g.
            ``{"lambda_max": (B,), "prior_param": (B,)}``; they are added to ``targets``.
        hyper_key: batch/targets key of the codes.
        check_finite: raise a ``ValueError`` naming the file when an image holds NaN or Inf.
        network_kwargs: keyword arguments passed to every network call, e.g. ``{"extrapolate": True}`` for
            :class:`~svreg_monai.networks.nets.HyperTransMorphTVFSPR` codes outside the trained range.
    """

    def __init__(
        self,
        moving_key: str = RegistrationKeys.MOVING,
        fixed_key: str = RegistrationKeys.FIXED,
        label_keys: tuple[str, ...] = (RegistrationKeys.MOVING_LABEL, RegistrationKeys.FIXED_LABEL),
        hyper_sampler: Callable[[int, torch.device], torch.Tensor] | None = None,
        hyper_to_loss: Callable[[torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
        hyper_key: str = RegistrationKeys.HYPER,
        check_finite: bool = True,
        network_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if network_kwargs is not None and not isinstance(network_kwargs, Mapping):
            raise ValueError(f"network_kwargs must be a mapping or None, got {network_kwargs!r}.")
        self.moving_key = moving_key
        self.fixed_key = fixed_key
        self.label_keys = tuple(label_keys)
        self.hyper_sampler = hyper_sampler
        self.hyper_to_loss = hyper_to_loss
        self.hyper_key = hyper_key
        self.check_finite = check_finite
        self.network_kwargs = dict(network_kwargs or {})

    def _image(self, batchdata: Mapping[str, Any], key: str, device: Any, non_blocking: bool, **kwargs: Any):
        if key not in batchdata:
            raise ValueError(f"batch has no {key!r} image; keys received: {sorted(batchdata)}.")
        x = batchdata[key]
        if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"batch[{key!r}] must be a (B, C, *S) tensor with 2 or 3 spatial dims, got {shape}.")
        if self.check_finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{key} image contains NaN or Inf values{describe_source(x)}.")
        return x.to(device=device, non_blocking=non_blocking, **kwargs)

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, Any], tuple, dict]:
        if not isinstance(batchdata, Mapping):
            raise ValueError(f"registration batches must be dicts, got {type(batchdata).__name__}.")
        moving = self._image(batchdata, self.moving_key, device, non_blocking, **kwargs)
        fixed = self._image(batchdata, self.fixed_key, device, non_blocking, **kwargs)
        if moving.shape[0] != fixed.shape[0] or moving.shape[2:] != fixed.shape[2:]:
            raise ValueError(
                f"moving {tuple(moving.shape)}{describe_source(moving)} and fixed {tuple(fixed.shape)}"
                f"{describe_source(fixed)} must have the same batch size and spatial shape."
            )
        targets: dict[str, Any] = {self.moving_key: moving, self.fixed_key: fixed}
        for key in self.label_keys:
            if key in batchdata and isinstance(batchdata[key], torch.Tensor):
                targets[key] = batchdata[key].to(device=device, non_blocking=non_blocking)
        args: tuple = (fixed,)
        hyper = batchdata.get(self.hyper_key)
        if hyper is None and self.hyper_sampler is not None:
            hyper = self.hyper_sampler(moving.shape[0], moving.device)
        if hyper is not None:
            hyper = torch.as_tensor(hyper, dtype=moving.dtype, device=moving.device)
            if hyper.ndim != 2 or hyper.shape[0] != moving.shape[0]:
                raise ValueError(
                    f"hyperparameter codes must have shape (B, H) with B={moving.shape[0]}, got {tuple(hyper.shape)}."
                )
            targets[self.hyper_key] = hyper
            args = (fixed, hyper)
            if self.hyper_to_loss is not None:
                targets.update(self.hyper_to_loss(hyper))
        return moving, targets, args, dict(self.network_kwargs)
