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
"""Ignite handler that shows a registered pair in TensorBoard: images, weight map, deformed grid and log det J."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ignite.engine import Engine, Events
from monai.handlers import TensorBoardHandler

from svreg_monai.handlers._batch import engine_data, sample_views
from svreg_monai.utils.keys import RegistrationKeys
from svreg_monai.utils.validation import check_positive_int
from svreg_monai.visualize.figures import PANEL_NAMES, tensorboard_slices

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["RegistrationTensorBoardImageHandler"]

logger = logging.getLogger(__name__)

_DEFAULT_PANELS = ("fixed", "moving", "warped", "weight", "deformed_grid", "log_jacobian")


class RegistrationTensorBoardImageHandler(TensorBoardHandler):
    """Write the panels of one sample of ``engine.state.output`` to TensorBoard as images.

    The engine output is the post-processed registration dict (see :class:`~svreg_monai.utils.RegistrationKeys`),
    batched (``(B, C, *S)`` tensors) or decollated (a list of per-sample dicts). For sample ``batch_index`` the
    handler writes, with :func:`~svreg_monai.visualize.tensorboard_slices` (central slice along ``axis`` for 3D),
    the images ``<tag_prefix>fixed``, ``moving``, ``warped``, ``weight`` (lambda, not normalised when in
    ``[0, 1]``), ``deformed_grid`` and ``log_jacobian`` (``[-L, L]`` mapped to ``[0, 1]``, 0.5 = no volume change);
    ``panels`` selects others (``"difference"`` is ``|warped - fixed|``). Panels whose keys are missing from the
    output are skipped (logged at debug level).

    Like :class:`monai.handlers.TensorBoardImageHandler`, it runs every ``interval`` epochs (``epoch_level=True``)
    or iterations, with the step ``engine.state.epoch`` or ``engine.state.iteration``; a MONAI evaluator run by a
    trainer's ``ValidationHandler`` has ``state.epoch`` equal to the trainer's epoch. ``step_transform(engine)``
    overrides the step (e.g. ``lambda e: trainer.state.iteration``).

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` (or TensorBoardX one); default: a new writer in
            ``log_dir``, closed by :meth:`close`.
        log_dir: directory of the default writer.
        interval: write every ``interval`` epochs or iterations.
        epoch_level: trigger on ``EPOCH_COMPLETED`` (True) or ``ITERATION_COMPLETED`` (False).
        output_transform: maps ``engine.state.output``, completed with the batch entries it lacks (see
            :func:`~svreg_monai.handlers._batch.engine_data`), to the registration dict (or list of dicts).
        batch_index: index of the sample shown.
        tag_prefix: prepended to every image tag, e.g. ``"val/"``.
        step_transform: ``engine -> int`` global step; default as described above.
        panels: names of the panels to write, from :data:`~svreg_monai.visualize.PANEL_NAMES`.
        axis: spatial axis along which 3D volumes are sliced (central slice); default the last.
        grid_spacing: grid line spacing in voxels.
        jacobian_limit: fixed symmetric limit of ``log det J`` (comparable colours across steps); default from
            the data of each step.

    Raises:
        ValueError: on an unknown panel name, a negative ``batch_index`` or an ``interval`` < 1.
    """

    def __init__(
        self,
        summary_writer: SummaryWriter | None = None,
        log_dir: str = "./runs",
        interval: int = 1,
        epoch_level: bool = True,
        output_transform: Callable[[Any], Any] = lambda x: x,
        batch_index: int = 0,
        tag_prefix: str = "",
        step_transform: Callable[[Engine], int] | None = None,
        panels: Sequence[str] = _DEFAULT_PANELS,
        axis: int = -1,
        grid_spacing: int = 8,
        jacobian_limit: float | None = None,
    ) -> None:
        unknown = [p for p in panels if p not in PANEL_NAMES]
        if unknown:
            raise ValueError(f"panels must be among {PANEL_NAMES}, got unknown {unknown}.")
        if isinstance(batch_index, bool) or not isinstance(batch_index, int) or batch_index < 0:
            raise ValueError(f"batch_index must be a non-negative integer, got {batch_index!r}.")
        check_positive_int(interval, "interval")
        super().__init__(summary_writer=summary_writer, log_dir=log_dir)
        self.interval = interval
        self.epoch_level = epoch_level
        self.output_transform = output_transform
        self.batch_index = batch_index
        self.tag_prefix = tag_prefix
        self.step_transform = step_transform
        self.panels = tuple(panels)
        self.axis = axis
        self.grid_spacing = grid_spacing
        self.jacobian_limit = jacobian_limit

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``EPOCH_COMPLETED`` or ``ITERATION_COMPLETED`` (every ``interval``)."""
        event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
        engine.add_event_handler(event(every=self.interval), self)

    def _step(self, engine: Engine) -> int:
        if self.step_transform is not None:
            return int(self.step_transform(engine))
        return int(engine.state.epoch if self.epoch_level else engine.state.iteration)

    def __call__(self, engine: Engine) -> None:
        """Write the panels of sample ``batch_index`` of the current output.

        Args:
            engine: the Ignite engine (trainer or evaluator) whose ``state.output`` is shown.
        """
        views = sample_views(self.output_transform(engine_data(engine)))
        if self.batch_index >= len(views):
            logger.debug(
                "RegistrationTensorBoardImageHandler: batch_index %d not in an output of %d sample(s); skipped.",
                self.batch_index,
                len(views),
            )
            return
        view = views[self.batch_index]
        keys = {
            "fixed": RegistrationKeys.FIXED,
            "moving": RegistrationKeys.MOVING,
            "warped": RegistrationKeys.WARPED,
            "weight": RegistrationKeys.WEIGHT,
            "ddf": RegistrationKeys.DDF,
        }
        needed = set()
        for panel in self.panels:
            needed |= {"difference": {"fixed", "warped"}, "deformed_grid": {"ddf"}, "log_jacobian": {"ddf"}}.get(
                panel, {panel}
            )
        tensors = {arg: view.get(keys[arg]) if arg in needed else None for arg in keys}
        missing = sorted(keys[arg] for arg in needed if tensors[arg] is None)
        if missing:
            logger.debug("RegistrationTensorBoardImageHandler: output has no %s; their panels are skipped.", missing)
        if all(t is None for t in tensors.values()):
            return
        images = tensorboard_slices(
            **tensors, axis=self.axis, grid_spacing=self.grid_spacing, jacobian_limit=self.jacobian_limit
        )
        step = self._step(engine)
        for name in self.panels:
            if name in images:
                self._writer.add_image(f"{self.tag_prefix}{name}", images[name], step, dataformats="CHW")
        flush = getattr(self._writer, "flush", None)
        if callable(flush):
            flush()
