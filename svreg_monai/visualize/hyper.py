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
"""Figures over the regularisation hyperparameters of a hyper-conditioned network.

- :func:`landscape_figure`: a heatmap of a metric (validation Dice, NDV, ...) over a grid of the two
  hyperparameters, as the grid searches of Chen et al. (arXiv:2412.17982);
- :func:`hyperparameter_grid_figure`: for one image pair, the λ map and the deformed grid at each setting of a
  small grid of (prior parameter, ``lambda_max``), as the paper's figure of test-time control.

Both draw with matplotlib's Agg canvas (no pyplot state), imported on first use, and write PNGs atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.utils import OptionalImportError, convert_to_tensor

from svreg_monai.utils.io import atomic_write
from svreg_monai.visualize.fields import deformed_grid
from svreg_monai.visualize.figures import _import_matplotlib, central_slices

__all__ = ["hyperparameter_grid_figure", "landscape_figure"]

_MAX_TICKS = 11
_MAX_ANNOTATED = 12  # cells per axis up to which values are printed in the cells


def _matplotlib() -> tuple[type, type]:
    try:
        return _import_matplotlib()
    except OptionalImportError as e:
        raise OptionalImportError(
            "the hyperparameter figures require matplotlib, which is not installed; install it with "
            "`pip install matplotlib`."
        ) from e


def _check_png(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end with '.png', got {str(path)!r}.")
    return path


def _save(fig: object, path: Path, dpi: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)  # type: ignore[attr-defined]
    return path


def _cell_text(value: float, finite: np.ndarray) -> str:
    """The value with enough decimals to tell the cells of a flat landscape apart (3 significant digits at least)."""
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    if spread <= 0 or value == 0:
        return f"{value:.3g}"
    decimals = int(np.clip(np.ceil(-np.log10(spread)) + 1, 0, 6))
    return f"{value:.{decimals}f}" if decimals > 2 else f"{value:.3g}"


def _tick_positions(n: int) -> list[int]:
    if n <= _MAX_TICKS:
        return list(range(n))
    step = int(np.ceil((n - 1) / (_MAX_TICKS - 1)))
    return list(range(0, n, step))


def landscape_figure(
    values: np.ndarray | torch.Tensor,
    row_values: Sequence[float],
    col_values: Sequence[float],
    path: str | os.PathLike,
    title: str = "",
    row_label: str = "α − 1",
    col_label: str = "λ_max",
    colorbar_label: str = "",
    cmap: str = "viridis",
    best: tuple[int, int] | None = None,
    dpi: int = 100,
) -> Path:
    """Save a heatmap of ``values[i, j]`` at ``(row_values[i], col_values[j])`` as a PNG.

    Rows run bottom to top and columns left to right, ticks show the hyperparameter values, each cell is
    annotated with its value on grids of up to 12 x 12, NaN cells are blank, and ``best`` is outlined in red.

    Args:
        values: ``(R, C)`` metric values.
        row_values: the ``R`` values of the row hyperparameter (e.g. ``alpha - 1``).
        col_values: the ``C`` values of the column hyperparameter (e.g. ``lambda_max``).
        path: destination ``.png`` file (parent folders are created).
        title: figure title.
        row_label: label of the vertical axis.
        col_label: label of the horizontal axis.
        colorbar_label: label of the colour bar.
        cmap: matplotlib colour map.
        best: ``(i, j)`` cell to mark, or None.
        dpi: resolution of the PNG.

    Returns:
        the written path.

    Raises:
        ValueError: when the shapes disagree, ``best`` lies outside the grid or ``path`` is not a ``.png``.
        ImportError: when matplotlib is not installed.
    """
    path = _check_png(path)
    v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    rows, cols = np.asarray(row_values, dtype=np.float64), np.asarray(col_values, dtype=np.float64)
    if v.ndim != 2 or v.shape != (rows.size, cols.size):
        raise ValueError(
            f"values must have shape (len(row_values), len(col_values)) = ({rows.size}, {cols.size}), got {v.shape}."
        )
    if best is not None and not (0 <= best[0] < v.shape[0] and 0 <= best[1] < v.shape[1]):
        raise ValueError(f"best must be a cell (i, j) of the {v.shape} grid, got {best!r}.")
    figure_cls, canvas_cls = _matplotlib()
    fig = figure_cls(figsize=(1.8 + 0.45 * max(cols.size, 6), 1.4 + 0.4 * max(rows.size, 6)), dpi=dpi)
    canvas_cls(fig)
    ax = fig.subplots()
    finite = v[np.isfinite(v)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    im = ax.imshow(np.ma.masked_invalid(v), origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    cbar = fig.colorbar(im, ax=ax)
    if colorbar_label:
        cbar.set_label(colorbar_label)
    for axis_ticks, axis_labels, vals in (
        (ax.set_xticks, ax.set_xticklabels, cols),
        (ax.set_yticks, ax.set_yticklabels, rows),
    ):
        ticks = _tick_positions(vals.size)
        axis_ticks(ticks)
        axis_labels([f"{vals[t]:.3g}" for t in ticks], fontsize=8)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    if max(v.shape) <= _MAX_ANNOTATED:
        mid = 0.5 * (vmin + vmax)
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                if np.isfinite(v[i, j]):
                    color = "black" if v[i, j] > mid else "white"
                    text = _cell_text(float(v[i, j]), finite)
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    if best is not None:
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _as_cpu(x: object, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}.")
    x = x.detach()
    x = convert_to_tensor(x, track_meta=False)
    return x.cpu().float()


def hyperparameter_grid_figure(
    weights: Sequence[Sequence[torch.Tensor]],
    ddfs: Sequence[Sequence[torch.Tensor]],
    row_values: Sequence[float],
    col_values: Sequence[float],
    path: str | os.PathLike,
    row_label: str = "α − 1",
    col_label: str = "λ_max",
    title: str = "",
    axis: int = -1,
    grid_spacing: int = 4,
    weight_limits: Sequence[float] | None = None,
    dpi: int = 100,
) -> Path:
    """Save the λ maps (left block) and deformed grids (right block) of one pair over a grid of settings.

    Cell ``(i, j)`` of each block is the setting ``(row_values[i], col_values[j])``; rows run top to bottom. 3D
    volumes are shown by their central slice along ``axis``; the grid is deformed by the full 3D field and drawn
    with lines across the two in-plane axes (:func:`~svreg_monai.visualize.deformed_grid`). The λ maps share one
    colour scale (``weight_limits``, default ``[0, 1]`` when all weights lie in it, else their range).

    Args:
        weights: ``R`` rows of ``C`` weight maps ``(1, *S)``.
        ddfs: ``R`` rows of ``C`` displacements ``(N, *S)`` in voxels.
        row_values: the ``R`` row hyperparameter values (shown in the labels).
        col_values: the ``C`` column hyperparameter values.
        path: destination ``.png`` file (parent folders are created).
        row_label: name of the row hyperparameter.
        col_label: name of the column hyperparameter.
        title: figure title.
        axis: spatial axis along which 3D volumes are sliced (central slice).
        grid_spacing: grid line spacing in voxels.
        weight_limits: ``(vmin, vmax)`` of the λ colour scale.
        dpi: resolution of the PNG.

    Returns:
        the written path.

    Raises:
        ValueError: when the nested shapes disagree with ``row_values`` / ``col_values``, or on a bad ``path``.
        ImportError: when matplotlib is not installed.
    """
    path = _check_png(path)
    nrow, ncol = len(row_values), len(col_values)
    for name, block in (("weights", weights), ("ddfs", ddfs)):
        if len(block) != nrow or any(len(row) != ncol for row in block):
            raise ValueError(f"{name} must hold {nrow} rows of {ncol} maps (row_values x col_values).")
    if weight_limits is not None and (len(weight_limits) != 2 or not weight_limits[0] < weight_limits[1]):
        raise ValueError(f"weight_limits must be (vmin, vmax) with vmin < vmax, got {weight_limits!r}.")
    lam_views, grid_views = [], []
    for i in range(nrow):
        lam_row, grid_row = [], []
        for j in range(ncol):
            w = _as_cpu(weights[i][j], "weights")
            d = _as_cpu(ddfs[i][j], "ddfs")
            if w.ndim not in (3, 4) or w.shape[0] != 1 or d.ndim != w.ndim or tuple(d.shape[1:]) != tuple(w.shape[1:]):
                raise ValueError(
                    f"weights[{i}][{j}] must be (1, *S) and ddfs[{i}][{j}] (N, *S) on the same grid, got "
                    f"{tuple(w.shape)} and {tuple(d.shape)}."
                )
            n = w.ndim - 1
            if d.shape[0] != n:
                raise ValueError(f"ddfs[{i}][{j}] must have {n} channels, got shape {tuple(d.shape)}.")
            a = axis % 3 if n == 3 else None
            in_plane = None if a is None else tuple(k for k in range(3) if k != a)
            grid = deformed_grid(torch.nan_to_num(d)[None], spacing=grid_spacing, axes=in_plane)[0]
            lam_row.append(central_slices(w, axis=-1 if a is None else a)[0].numpy())
            grid_row.append(central_slices(grid, axis=-1 if a is None else a)[0].numpy())
        lam_views.append(lam_row)
        grid_views.append(grid_row)
    if weight_limits is None:
        finite = np.concatenate([x[np.isfinite(x)].ravel() for row in lam_views for x in row])
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        weight_limits = (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi if hi > lo else lo + 1.0)

    figure_cls, canvas_cls = _matplotlib()
    fig = figure_cls(figsize=(2.0 * 2 * ncol + 1.6, 2.0 * nrow + 0.9), dpi=dpi)
    canvas_cls(fig)
    # columns: the λ block, its colour bar, a spacer, the grid block
    gs = fig.add_gridspec(nrow, 2 * ncol + 2, width_ratios=[1.0] * ncol + [0.07, 0.2] + [1.0] * ncol)
    im = None
    for i in range(nrow):
        for j in range(ncol):
            for block, views in ((0, lam_views), (1, grid_views)):
                ax = fig.add_subplot(gs[i, j if block == 0 else ncol + 2 + j])
                ax.set_xticks([])
                ax.set_yticks([])
                if block == 0:
                    im = ax.imshow(views[i][j], cmap="viridis", vmin=weight_limits[0], vmax=weight_limits[1])
                else:
                    ax.imshow(views[i][j], cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
                ax.set_title(f"{'λ(x)' if block == 0 else 'grid'}  {col_label}={col_values[j]:.3g}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(f"{row_label}={row_values[i]:.3g}", fontsize=9)
    if im is not None:
        fig.colorbar(im, cax=fig.add_subplot(gs[:, ncol]), label="λ(x)")
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)
