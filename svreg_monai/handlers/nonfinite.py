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
"""Skip optimiser steps whose gradients are not finite, instead of writing NaN/inf into the weights."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

__all__ = ["SkipNonFiniteGradients"]


class SkipNonFiniteGradients:
    """Drop an iteration's gradients when any of them is NaN or infinite, so that the optimiser step changes nothing.

    What :class:`torch.amp.GradScaler` does for float16 on CUDA, for every other case (float32, and bfloat16 on CPU,
    where no scaler runs): after ``loss.backward()`` (MONAI's ``IterationEvents.BACKWARD_COMPLETED``) the gradients are
    checked; if one is not finite, every gradient is set to None, so that ``optimizer.step()`` skips all parameters
    (Adam's moments and step counts are left as they were, not decayed by a zero gradient). Each skip is counted in
    ``engine.state.metrics[metric_name]`` (logged by MONAI's ``StatsHandler``/``TensorBoardStatsHandler`` with the
    epoch's metrics) and reported by a warning naming the iteration and the first offending parameters. With MONAI's
    ``amp=True`` and an enabled gradient scaler (CUDA) the scaler skips such steps itself and this handler stands
    aside. With gradient
    accumulation, the micro-batches accumulated so far are dropped with the bad one.

    Args:
        parameters: the parameters to check; default ``engine.network.parameters()``.
        metric_name: name of the skip count in ``engine.state.metrics``.
        max_consecutive: raise ``RuntimeError`` after this many consecutive skipped steps (a diverged run, not a
            rare bad step); None never raises.
        logger_name: logger of the warnings.

    Example::

        SkipNonFiniteGradients().attach(trainer)  # or in a bundle's train_handlers
    """

    def __init__(
        self,
        parameters: Iterable[torch.nn.Parameter] | None = None,
        metric_name: str = "skipped_steps",
        max_consecutive: int | None = 20,
        logger_name: str = "svreg_monai",
    ) -> None:
        if max_consecutive is not None and (
            isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int) or max_consecutive < 1
        ):
            raise ValueError(f"max_consecutive must be a positive integer or None, got {max_consecutive!r}.")
        self.parameters = None if parameters is None else list(parameters)
        self.metric_name = metric_name
        self.max_consecutive = max_consecutive
        self.logger = logging.getLogger(logger_name)
        self.skipped = 0
        self.consecutive = 0

    def attach(self, engine: Engine) -> None:
        """Check after every backward pass of ``engine`` (a MONAI ``SupervisedTrainer`` or any engine that fires
        ``IterationEvents.BACKWARD_COMPLETED`` before its optimiser step)."""
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)
        engine.state.metrics.setdefault(self.metric_name, self.skipped)

    def _named_parameters(self, engine: Engine) -> list[tuple[str, torch.nn.Parameter]]:
        if self.parameters is not None:
            return [(f"parameter {i}", p) for i, p in enumerate(self.parameters)]
        return list(engine.network.named_parameters())  # type: ignore[attr-defined]

    def __call__(self, engine: Engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None and scaler.is_enabled():
            return  # the gradient scaler skips non-finite steps (a scaler without CUDA is disabled and skips nothing)
        named = [(n, p) for n, p in self._named_parameters(engine) if p.grad is not None]
        if not named:
            return
        finite = torch.stack([torch.isfinite(p.grad).all() for _, p in named])
        if bool(finite.all()):
            self.consecutive = 0
            engine.state.metrics[self.metric_name] = self.skipped
            return
        bad = [n for (n, _), ok in zip(named, finite.tolist()) if not ok]
        for _, p in named:
            p.grad = None
        self.skipped += 1
        self.consecutive += 1
        engine.state.metrics[self.metric_name] = self.skipped
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        self.logger.warning(
            f"iteration {engine.state.iteration}: non-finite gradients in {shown}; optimiser step skipped "
            f"({self.skipped} skipped so far)."
        )
        if self.max_consecutive is not None and self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} consecutive iterations had non-finite gradients (last at iteration "
                f"{engine.state.iteration}, in {shown}): training has diverged. Lower the learning rate, check the "
                "inputs for NaN, or train without mixed precision."
            )

    def state_dict(self) -> dict[str, Any]:
        """The skip count, so that the handler can join a checkpoint's ``save_dict`` (the bundle's configs do not put
        it there: a resumed run counts from 0)."""
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict["skipped"])
        self.consecutive = 0
