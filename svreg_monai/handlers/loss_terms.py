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
"""Epoch averages of the loss terms (similarity, diffusion, prior) as engine metrics."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["LossTermsHandler"]


class LossTermsHandler:
    """Average ``loss.last_terms`` over each epoch and store them in ``engine.state.metrics``.

    :class:`~svreg_monai.losses.RegistrationLoss` keeps its last similarity / diffusion / prior values. This
    handler sums them every iteration and, at the end of the epoch, writes ``{prefix}{name}`` entries into
    ``engine.state.metrics`` where MONAI's ``StatsHandler`` and ``TensorBoardStatsHandler`` log them.

    Args:
        loss: the loss object; default ``engine.loss_function``.
        prefix: prefix of the metric names.
    """

    def __init__(self, loss: Any = None, prefix: str = "train_") -> None:
        self.loss = loss
        self.prefix = prefix
        self._sums: dict[str, float] = {}
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._store)

    def _reset(self, engine: Engine) -> None:
        self._sums, self._count = {}, 0

    def _accumulate(self, engine: Engine) -> None:
        loss = self.loss if self.loss is not None else getattr(engine, "loss_function", None)
        terms = getattr(loss, "last_terms", None)
        if not terms:
            return
        for name, value in terms.items():
            value = value.float().mean().item() if isinstance(value, torch.Tensor) else float(value)
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._count += 1

    def _store(self, engine: Engine) -> None:
        for name, total in self._sums.items():
            engine.state.metrics[f"{self.prefix}{name}"] = total / max(self._count, 1)
