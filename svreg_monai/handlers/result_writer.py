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
"""Ignite handler that saves the results of every registered pair of an evaluation and a table of metrics.

Layout written under ``output_dir``::

    <pair_id>/warped.nii.gz        moving image resampled onto the fixed grid (float32; C > 1 channels as 5D)
    <pair_id>/warped_label.nii.gz  warped labels (int16; int32 if the values do not fit), if present
    <pair_id>/ddf.nii.gz           displacement in voxels, channel order = array axes, as a NIfTI vector field
                                   (5D ``(*S, 1, N)``, intent 'vector'; see :func:`svreg_monai.utils.save_nifti`)
    <pair_id>/weight.nii.gz        regularisation weight map lambda(x) (float32), if present
    <pair_id>/jacobian_det.nii.gz  det J of x + ddf(x) (float32; one-sided differences on the border)
    <pair_id>/figure.png           panels of :func:`svreg_monai.visualize.registration_figure`
    metrics.csv                    one row per pair, an ``identity`` row (with moving labels) and a final ``mean`` row

All images carry the affine of the fixed image, on whose grid they are defined. Every file is written atomically.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from svreg_monai.handlers._batch import SampleView, engine_data, sample_views
from svreg_monai.metrics.functional import compute_jacobian_metrics, jacobian_determinant
from svreg_monai.metrics.labels import dice_per_structure, labels_to_onehot
from svreg_monai.utils.io import pair_id_from_filenames, save_nifti, write_csv
from svreg_monai.utils.keys import RegistrationKeys
from svreg_monai.visualize.figures import registration_figure

__all__ = ["RegistrationResultWriter"]

logger = logging.getLogger(__name__)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


class RegistrationResultWriter:
    """Save, for every pair an evaluator registers, the warped images, the fields, a figure and its metrics.

    Attach it to an evaluator whose ``engine.state.output`` is the post-processed registration dict (batched, see
    :class:`~svreg_monai.utils.RegistrationKeys`; a decollated list of dicts works too). On each
    ``ITERATION_COMPLETED`` every sample is written into ``output_dir/<pair_id>/`` (see the module docstring);
    on ``COMPLETED`` the table ``output_dir/<csv_name>`` is written with the columns
    ``pair, moving, fixed, dice_<name>..., dice_mean, ndp, ndv, sd_log_j``, an ``identity`` row when moving labels
    were given (their mean Dice before registration) and a final ``mean`` row (the mean over the pairs of each
    column, NaN skipped); both summary rows are logged at INFO level. ``STARTED`` clears the rows, so each
    evaluation run gets its own table.

    Pair identifiers are ``<moving>_to_<fixed>`` built by :func:`file_stem` from the ``filename_or_obj``
    metadata, with ``_2``, ``_3``, ... appended to a repeated identifier; without file names they are
    ``pair_0000``, ``pair_0001``, ... in the order of the run.

    The affine of a sample is the fixed image's: ``fixed.affine[b]`` of the :class:`~monai.data.MetaTensor`, else
    the ``"affine"`` of ``fixed_meta_dict``; else, if ``spacing_key`` names a metadata entry with the voxel
    spacing (e.g. ``"pixdim"`` or ``"spacing"``), the diagonal affine of that spacing; else the identity, with a
    warning.

    Metrics per pair:

    - ``dice_<name>``: Dice of each structure of ``label_values`` (a label value, or a sequence of values merged
      into one structure) between ``warped_label`` and ``fixed_label``; NaN when the structure is absent from both
      or the labels are missing. Without ``label_values``, the channels of ``warped_label_onehot`` and
      ``fixed_label_onehot`` are used when present (names ``label_names`` or ``class_<k>``), otherwise there are no
      Dice columns. ``dice_mean`` is the mean over the structures, NaN skipped.
    - ``ndp``, ``ndv`` (%), ``sd_log_j``: :func:`~svreg_monai.metrics.compute_jacobian_metrics` of the ``ddf``
      (one-voxel border excluded); NaN without a ``ddf``.

    In distributed evaluation (``torch.distributed`` initialised with more than one process) every rank writes the
    folders of its own pairs, and with ``gather`` (default) ``COMPLETED`` gathers the rows of all ranks (rank 0's
    first), every rank computes the same summary and rank 0 alone writes the table. Gathering is a collective
    operation: attach the writer on every rank (or set ``gather=False`` and give each rank its own ``output_dir``
    or ``csv_name``). Pair identifiers are made unique within a rank only.

    Args:
        output_dir: output folder, created if missing.
        label_values: structures for the Dice columns (see above).
        label_names: column names of the structures (``dice_<name>``); default ``label_<value>``.
        save_figures: also save ``figure.png`` for each pair (needs matplotlib).
        csv_name: file name of the metrics table inside ``output_dir``.
        output_transform: maps ``engine.state.output``, completed with the batch entries it lacks (see
            :func:`~svreg_monai.handlers._batch.engine_data`), to the registration dict (or list of dicts).
        spacing_key: metadata key of the voxel spacing, used for the affine when the fixed image has none.
        figure_kwargs: extra keyword arguments of :func:`~svreg_monai.visualize.registration_figure`.
        gather: in a distributed run, gather the rows of all ranks into one table written by rank 0 (see above).

    Attributes:
        rows: one dict per pair written in the current run by this process, in the column order of the table.
        summary: the ``mean`` row (empty before ``COMPLETED`` or when no pair was written).

    Raises:
        ValueError: when ``label_names`` does not match ``label_values`` in length.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        label_values: Sequence[int] | Sequence[Sequence[int]] | None = None,
        label_names: Sequence[str] | None = None,
        save_figures: bool = True,
        csv_name: str = "metrics.csv",
        output_transform: Callable[[Any], Any] = lambda x: x,
        spacing_key: str | None = None,
        figure_kwargs: dict[str, Any] | None = None,
        gather: bool = True,
    ) -> None:
        if label_values is not None:
            label_values = [v if isinstance(v, (int, np.integer)) else tuple(v) for v in label_values]
            if not label_values:
                raise ValueError("label_values must name at least one structure, got an empty sequence.")
        if label_names is not None:
            label_names = [str(n) for n in label_names]
            if label_values is not None and len(label_names) != len(label_values):
                raise ValueError(
                    f"label_names must have one name per label_values entry ({len(label_values)}), "
                    f"got {len(label_names)}: {label_names}."
                )
        if not csv_name or Path(csv_name).name != csv_name or not csv_name.endswith(".csv"):
            raise ValueError(f"csv_name must be a file name ending with '.csv', got {csv_name!r}.")
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.label_values = label_values
        self.label_names = label_names
        self.save_figures = save_figures
        self.csv_name = csv_name
        self.output_transform = output_transform
        self.spacing_key = spacing_key
        self.figure_kwargs = dict(figure_kwargs or {})
        self.gather = bool(gather)
        self.rows: list[dict[str, Any]] = []
        self.identity_rows: list[dict[str, float]] = []
        self.summary: dict[str, Any] = {}
        self._dice_names: list[str] | None = self._names_for(len(label_values)) if label_values is not None else None
        self._used_ids: set[str] = set()
        self._warned_affine = False

    def _names_for(self, count: int) -> list[str]:
        if self.label_names is not None:
            if len(self.label_names) != count:
                raise ValueError(f"label_names has {len(self.label_names)} names for {count} one-hot channels.")
            return list(self.label_names)
        if self.label_values is None:
            return [f"class_{k}" for k in range(count)]
        names = []
        for v in self.label_values:
            names.append(f"label_{v}" if isinstance(v, (int, np.integer)) else "label_" + "+".join(str(i) for i in v))
        return names

    def attach(self, engine: Engine) -> None:
        """Register :meth:`reset` on ``STARTED``, :meth:`__call__` on ``ITERATION_COMPLETED``, :meth:`write_summary`
        on ``COMPLETED``."""
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.write_summary)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the rows, the summary and the used pair identifiers of a previous run."""
        self.rows = []
        self.identity_rows = []
        self.summary = {}
        self._used_ids = set()
        if self.label_values is None:
            self._dice_names = None

    def __call__(self, engine: Engine) -> None:
        """Write every sample of the current ``engine.state.output``."""
        self.write_output(self.output_transform(engine_data(engine)))

    def write_output(self, output: Any) -> list[dict[str, Any]]:
        """Write every sample of an output dict (or list of dicts) and return their metric rows."""
        views = sample_views(output)
        if not views:
            logger.debug("RegistrationResultWriter: the output holds no sample; nothing written.")
        return [self._write_sample(view) for view in views]

    # ----------------------------------------------------------------------------------------------------------------

    def _pair_id(self, moving_name: str | None, fixed_name: str | None) -> str:
        if moving_name and fixed_name:
            base = pair_id_from_filenames(moving_name, fixed_name)
        else:
            base = f"pair_{len(self.rows):04d}"
        pair_id, count = base, 1
        while pair_id in self._used_ids:
            count += 1
            pair_id = f"{base}_{count}"
        self._used_ids.add(pair_id)
        return pair_id

    def _affine(self, view: SampleView) -> np.ndarray:
        affine = view.meta(RegistrationKeys.FIXED, "affine")
        if affine is not None:
            if isinstance(affine, torch.Tensor):
                affine = affine.detach().cpu().numpy()
            return np.asarray(affine, dtype=np.float64)
        spatial_dims = None
        fixed = view.get(RegistrationKeys.FIXED)
        if fixed is not None:
            spatial_dims = fixed.ndim - 1
        if self.spacing_key is not None:
            spacing = view.meta(RegistrationKeys.FIXED, self.spacing_key)
            if spacing is not None:
                spacing = np.asarray(
                    spacing.detach().cpu().numpy() if isinstance(spacing, torch.Tensor) else spacing, dtype=np.float64
                ).reshape(-1)
                n = spatial_dims or min(len(spacing), 3)
                if len(spacing) < n:
                    raise ValueError(
                        f"metadata {self.spacing_key!r} must hold {n} spacings, got {spacing.tolist()} "
                        f"for {view.meta(RegistrationKeys.FIXED, 'filename_or_obj')!r}."
                    )
                return np.diag([*spacing[:n].tolist(), *([1.0] * (4 - n))])
        if not self._warned_affine:
            logger.warning(
                "RegistrationResultWriter: the fixed image has no affine metadata%s; writing the identity affine.",
                f" nor {self.spacing_key!r}" if self.spacing_key else "",
            )
            self._warned_affine = True
        return np.eye(4)

    def _dice_values(self, view: SampleView, label_key: str, onehot_key: str) -> list[float] | None:
        """Dice of ``label_key`` (or its one-hot ``onehot_key``) against the fixed labels, per structure."""
        label = view.get(label_key)
        fixed_label = view.get(RegistrationKeys.FIXED_LABEL)
        onehot = view.get(onehot_key)
        fixed_onehot = view.get(RegistrationKeys.FIXED_LABEL_ONEHOT)
        have_onehot = onehot is not None and fixed_onehot is not None
        if self.label_values is not None:
            if label is not None and fixed_label is not None:
                pred = labels_to_onehot(label[None].round().long(), self.label_values)
                target = labels_to_onehot(fixed_label[None].round().long(), self.label_values)
                return dice_per_structure(pred, target)
            if have_onehot and onehot.shape[0] == len(self.label_values):
                return dice_per_structure(onehot[None], fixed_onehot[None])
            return None
        if not have_onehot:
            return None
        if self._dice_names is None:
            self._dice_names = self._names_for(onehot.shape[0])
        if onehot.shape[0] != len(self._dice_names):
            raise ValueError(
                f"{onehot_key} has {onehot.shape[0]} channels, but earlier samples had {len(self._dice_names)}."
            )
        return dice_per_structure(onehot[None], fixed_onehot[None])

    def _dice_row(self, values: list[float] | None) -> dict[str, float]:
        if self._dice_names is None:
            return {}
        if values is None:
            values = [float("nan")] * len(self._dice_names)
        row = {f"dice_{name}": v for name, v in zip(self._dice_names, values)}
        row["dice_mean"] = _nanmean(values)
        return row

    def _write_sample(self, view: SampleView) -> dict[str, Any]:
        moving_name = view.meta(RegistrationKeys.MOVING, "filename_or_obj")
        fixed_name = view.meta(RegistrationKeys.FIXED, "filename_or_obj")
        moving_name = str(moving_name) if isinstance(moving_name, (str, os.PathLike)) else None
        fixed_name = str(fixed_name) if isinstance(fixed_name, (str, os.PathLike)) else None
        pair_id = self._pair_id(moving_name, fixed_name)
        pair_dir = self.output_dir / pair_id
        pair_dir.mkdir(parents=True, exist_ok=True)
        affine = self._affine(view)

        fixed = view.get(RegistrationKeys.FIXED)
        moving = view.get(RegistrationKeys.MOVING)
        warped = view.get(RegistrationKeys.WARPED)
        warped_label = view.get(RegistrationKeys.WARPED_LABEL)
        weight = view.get(RegistrationKeys.WEIGHT)
        ddf = view.get(RegistrationKeys.DDF)

        if warped is not None:
            save_nifti(warped, affine, pair_dir / "warped.nii.gz", dtype=np.float32, vector=False)
        if warped_label is not None:
            lab = warped_label.round().long()
            fits = lab.numel() == 0 or (int(lab.min()) >= -(2**15) and int(lab.max()) < 2**15)
            save_nifti(lab, affine, pair_dir / "warped_label.nii.gz", dtype=np.int16 if fits else np.int32)
        if weight is not None:
            save_nifti(weight, affine, pair_dir / "weight.nii.gz", dtype=np.float32)

        row: dict[str, Any] = {"pair": pair_id, "moving": moving_name or "", "fixed": fixed_name or ""}
        row.update(
            self._dice_row(self._dice_values(view, RegistrationKeys.WARPED_LABEL, RegistrationKeys.WARPED_LABEL_ONEHOT))
        )
        identity = self._dice_values(view, RegistrationKeys.MOVING_LABEL, RegistrationKeys.MOVING_LABEL_ONEHOT)
        if identity is not None:
            self.identity_rows.append(self._dice_row(identity))
        ndp = ndv = sd = float("nan")
        if ddf is not None:
            save_nifti(ddf, affine, pair_dir / "ddf.nii.gz", dtype=np.float32)
            save_nifti(jacobian_determinant(ddf[None])[0], affine, pair_dir / "jacobian_det.nii.gz", dtype=np.float32)
            ndp, ndv, sd = (float(v) for v in compute_jacobian_metrics(ddf[None])[0])
        row.update({"ndp": ndp, "ndv": ndv, "sd_log_j": sd})

        if self.save_figures:
            if fixed is not None and moving is not None and warped is not None:
                registration_figure(
                    fixed, moving, warped, weight, ddf, pair_dir / "figure.png", title=pair_id, **self.figure_kwargs
                )
            else:
                logger.debug("RegistrationResultWriter: %s lacks fixed/moving/warped; no figure.", pair_id)
        self.rows.append(row)
        return row

    def _table_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, float]], bool]:
        """The rows of the table, the identity Dice rows and whether this process writes the table (see the
        distributed note of the class)."""
        if not (self.gather and dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.rows, self.identity_rows, True
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self.rows, self.identity_rows))
        rows = [row for part in parts for row in (part[0] if part else [])]
        identity = [row for part in parts for row in (part[1] if part else [])]
        return rows, identity, dist.get_rank() == 0

    def write_summary(self, engine: Engine | None = None) -> Path | None:
        """Compute the ``identity`` and ``mean`` rows, write the metrics table and log its summary.

        The table holds all rows of the run, then ``identity`` (the mean Dice of the unregistered moving labels, with
        the Jacobian metrics of the identity transform, 0; only when moving labels were given) and ``mean``.

        Returns:
            the path of the table; ``None`` on the ranks other than 0 of a gathered distributed run, which write
            nothing.
        """
        rows, identity_rows, write = self._table_rows()
        path = self.output_dir / self.csv_name
        fieldnames = list(dict.fromkeys(["pair", "moving", "fixed"] + [k for row in rows for k in row]))
        self.summary = {}
        summaries: list[dict[str, Any]] = []
        if rows:
            if identity_rows:  # the identity transform has no folding and no volume change: its Jacobian metrics are 0
                identity = _column_means("identity", identity_rows, fieldnames[3:])
                identity.update({k: 0.0 for k in ("ndp", "ndv", "sd_log_j") if k in identity})
                summaries.append(identity)
            self.summary = _column_means("mean", rows, fieldnames[3:])
            summaries.append(self.summary)
        if not write:
            return None
        if not rows:
            logger.warning("RegistrationResultWriter: no pair was written; %s has a header only.", self.csv_name)
            return write_csv(path, [], fieldnames)
        written = write_csv(path, [*rows, *summaries], fieldnames)
        logger.info(_summary_table(summaries, fieldnames[3:], f"{len(rows)} pair(s), table {written}"))
        return written


def _column_means(name: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> dict[str, Any]:
    """A summary row named ``name``: the mean of each column over ``rows``, NaN (and missing entries) skipped."""
    means = {c: _nanmean([row.get(c, float("nan")) for row in rows]) for c in columns}
    return {"pair": name, "moving": "", "fixed": "", **means}


def _summary_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str) -> str:
    """A plain-text table of ``rows`` (their ``pair`` entry first, then ``columns``, 4 decimals), under ``title``."""
    header = ["", *columns]
    lines = [[str(row.get("pair", ""))] + [f"{float(row.get(c, float('nan'))):.4f}" for c in columns] for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([f"Registration results, {title}:", fmt.format(*header), *(fmt.format(*line) for line in lines)])
