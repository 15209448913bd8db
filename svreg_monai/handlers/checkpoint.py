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
"""Epoch checkpoints of the whole training state, and resuming an interrupted training from the newest one."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver

__all__ = ["TrainingCheckpoint", "latest_checkpoint"]


def _epoch_checkpoints(ckpt_dir: Path, file_prefix: str = "") -> list[tuple[int, Path]]:
    if not ckpt_dir.is_dir():
        return []
    prefix = re.escape(f"{file_prefix}_" if file_prefix else "")
    pattern = re.compile(rf"^{prefix}checkpoint_epoch=(\d+)\.pt$")
    return sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := pattern.match(p.name)))


def latest_checkpoint(ckpt_dir: str | os.PathLike, file_prefix: str = "") -> Path | None:
    """Return the epoch checkpoint with the highest epoch in ``ckpt_dir``, or ``None``.

    MONAI's ``CheckpointSaver(save_interval=1, epoch_level=True, file_prefix=...)`` names its files
    ``checkpoint_epoch={N}.pt``, or ``{file_prefix}_checkpoint_epoch={N}.pt`` (written atomically by Ignite).
    Iteration-level or final checkpoints are ignored: resuming is epoch-granular, so an epoch cut short by an
    interruption is simply run again.
    """
    found = _epoch_checkpoints(Path(ckpt_dir), file_prefix)
    return found[-1][1] if found else None


class _KeyMetricState:
    """``state_dict``/``load_state_dict`` view of the best-metric list of a key-metric ``CheckpointSaver``.

    MONAI's saver can restore that list (``load_state_dict``) but offers no public getter; the list lives in the
    Ignite ``Checkpoint`` it wraps, whose ``state_dict`` is read here.
    """

    def __init__(self, saver: Any) -> None:
        checkpoint = getattr(saver, "_key_metric_checkpoint", None)
        if checkpoint is None:
            raise ValueError("key_metric_saver must be a CheckpointSaver created with save_key_metric=True.")
        self.saver = saver
        self.checkpoint = checkpoint

    def state_dict(self) -> dict:
        return self.checkpoint.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the list; entries whose file is gone (a checkpoint copied without its best model, a deleted
        file) are dropped with a warning: Ignite would fail to remove them at the next improvement."""
        self.saver.load_state_dict(state_dict)
        folder = getattr(self.checkpoint.save_handler, "dirname", None)
        if folder is None:
            return
        kept = [item for item in self.checkpoint._saved if (Path(folder) / item.filename).is_file()]
        for item in self.checkpoint._saved:
            if item not in kept:
                logging.getLogger(__name__).warning(
                    "best model %s (metric %s) is listed in the resumed state but missing from %s; the next "
                    "validation result starts a new best.",
                    item.filename,
                    item.priority,
                    folder,
                )
        self.checkpoint._saved[:] = kept


class TrainingCheckpoint:
    """Save the whole training state every epoch and, on request, resume from the newest such checkpoint.

    MONAI bundle configs cannot pass the trainer into its own handlers (the trainer's config entry lists the
    handlers, so a handler referring to the trainer is a circular reference), yet resuming needs the trainer's epoch
    and iteration.
    This handler therefore adds the engine it is attached to under ``engine_key`` and composes MONAI's own pieces:
    a ``CheckpointSaver(save_interval, epoch_level=True, n_saved)`` that writes ``checkpoint_epoch=N.pt``
    atomically, and, when ``resume`` is set, a ``CheckpointLoader`` run at ``STARTED`` on the newest of those files
    (so training continues at epoch N + 1 with the optimizer and scheduler state; an epoch cut short by an
    interruption is run again, finished epochs are kept). Older epoch checkpoints, including those of the run
    before a resume, are pruned to the ``n_saved`` newest. The best-metric list of the evaluator's key-metric
    ``CheckpointSaver`` can be saved and restored with the rest, so a worse model after resuming does not replace
    the best one. Without a checkpoint, training starts from scratch
    and this is logged.

    Args:
        ckpt_dir: folder of the checkpoints.
        save_dict: objects to save and restore, e.g. ``{"network": net, "optimizer": opt, "lr_scheduler": s}``.
        resume: restore the newest checkpoint at start (a bundle's ``resume`` option).
        save: write checkpoints (``False`` on non-zero ranks of a distributed run, which only resume).
        engine_key: key under which the attached engine is saved and restored.
        save_interval: epochs between checkpoints.
        n_saved: number of epoch checkpoints kept.
        map_location: ``torch.load`` map location.
        key_metric_saver: the evaluator's key-metric ``CheckpointSaver`` (``save_key_metric=True``) whose
            best-metric list is saved and restored under ``"key_metric_saver"``, or ``None``.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        resume: bool = False,
        save: bool = True,
        engine_key: str = "trainer",
        save_interval: int = 1,
        n_saved: int = 1,
        map_location: Any = None,
        key_metric_saver: Any = None,
    ) -> None:
        if not save_dict:
            raise ValueError("save_dict must name at least one object to save.")
        if engine_key in save_dict:
            raise ValueError(f"save_dict must not contain {engine_key!r}: the attached engine is added under it.")
        if save_interval < 1 or n_saved < 1:
            raise ValueError(f"save_interval and n_saved must be >= 1, got {save_interval} and {n_saved}.")
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict = dict(save_dict)
        self.resume = bool(resume)
        self.save = bool(save)
        self.engine_key = engine_key
        self.save_interval = int(save_interval)
        self.n_saved = int(n_saved)
        self.map_location = map_location
        self.key_metric_state = None if key_metric_saver is None else _KeyMetricState(key_metric_saver)
        self.loaded_from: Path | None = None
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        objects = {**self.save_dict, self.engine_key: engine}
        if self.key_metric_state is not None:
            objects["key_metric_saver"] = self.key_metric_state
        if self.resume:
            engine.add_event_handler(Events.STARTED, self._resume, objects)
        if self.save:
            CheckpointSaver(
                save_dir=str(self.ckpt_dir),
                save_dict=objects,
                save_interval=self.save_interval,
                epoch_level=True,
                n_saved=self.n_saved,
            ).attach(engine)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._prune)

    def _prune(self, engine: Engine) -> None:
        """Delete epoch checkpoints beyond the ``n_saved`` newest (left by a run before a resume)."""
        for _, path in _epoch_checkpoints(self.ckpt_dir)[: -self.n_saved]:
            path.unlink(missing_ok=True)

    def _resume(self, engine: Engine, objects: dict[str, Any]) -> None:
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            self.logger.info(f"resume: no epoch checkpoint in {self.ckpt_dir}, starting from scratch.")
            return
        CheckpointLoader(load_path=str(path), load_dict=objects, map_location=self.map_location)(engine)
        self.loaded_from = path
        self.logger.info(
            f"resume: restored {sorted(objects)} from {path}; continuing after epoch {engine.state.epoch}."
        )
