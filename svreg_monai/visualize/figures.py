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
"""Panels of one registered pair, as a PNG figure or as TensorBoard images.

The panels are: fixed, moving, warped, ``|warped - fixed|``, the regularisation weight map lambda(x), the deformed
grid and ``log det J`` of the displacement. 3D volumes are shown by their central slice along one spatial axis
(the last by default); the deformed grid and the Jacobian are computed from the full 3D field and then sliced.

Display convention: a 2D slice is shown as stored, with its first axis as rows (top to bottom) and its second as
columns (left to right), like :func:`monai.visualize.matshow3d` and MONAI's TensorBoard handlers; reorient the
data beforehand (e.g. with :class:`monai.transforms.Orientation`) for a radiological view.

matplotlib is only needed by :func:`registration_figure`; it is imported on first use and drawn with the Agg
canvas, without touching pyplot's global state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.utils import OptionalImportError, convert_to_tensor, optional_import

from svreg_monai.metrics.functional import jacobian_determinant
from svreg_monai.utils.io import atomic_write
from svreg_monai.visualize.fields import deformed_grid

__all__ = ["central_slices", "registration_figure", "tensorboard_slices", "PANEL_NAMES"]

PANEL_NAMES = ("fixed", "moving", "warped", "difference", "weight", "deformed_grid", "log_jacobian")
"""Names of the panels, in display order (keys of :func:`tensorboard_slices`)."""

_TITLES = {
    "fixed": "fixed",
    "moving": "moving",
    "warped": "warped",
    "difference": "|warped - fixed|",
    "weight": "weight $\\lambda$",
    "deformed_grid": "deformed grid",
    "log_jacobian": "log det J",
}


def _as_float_cpu(x: object, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}.")
    x = x.detach()
    x = convert_to_tensor(x, track_meta=False)
    return x.cpu().float()


def _spatial_axis(axis: int, n: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int) or not -n <= axis < n:
        raise ValueError(f"axis must be a spatial axis in [{-n}, {n}) for {n}D data, got {axis!r}.")
    return axis % n


def central_slices(volume: torch.Tensor | np.ndarray, axis: int = -1, index: int | None = None) -> torch.Tensor:
    """2D view of a channel-first image: a 2D image unchanged, a 3D one sliced along a spatial axis.

    Args:
        volume: ``(C, H, W)`` or ``(C, H, W, D)``.
        axis: spatial axis (0-based; negative counts from the end) to slice a 3D volume along; default the last.
        index: slice index along ``axis``; default the central one, ``S[axis] // 2``.

    Returns:
        ``(C, H', W')``: the input for 2D, otherwise the slice (a view, in the input's dtype and device).
    """
    if isinstance(volume, np.ndarray):
        volume = torch.from_numpy(volume)
    if not isinstance(volume, torch.Tensor):
        raise TypeError(f"volume must be a torch.Tensor or numpy array, got {type(volume).__name__}.")
    if volume.ndim not in (3, 4):
        raise ValueError(f"volume must be channel-first (C, H, W) or (C, H, W, D), got shape {tuple(volume.shape)}.")
    if volume.ndim == 3:
        return volume
    a = _spatial_axis(axis, 3)
    size = volume.shape[1 + a]
    if index is None:
        index = size // 2
    if not -size <= index < size:
        raise ValueError(f"index must be in [{-size}, {size}) along axis {axis} of shape {tuple(volume.shape)}.")
    return volume.select(1 + a, index)


def _check_single(x: object, name: str, spatial: tuple[int, ...] | None, channels: int | None) -> torch.Tensor:
    t = _as_float_cpu(x, name)
    n = len(spatial) if spatial is not None else t.ndim - 1
    if t.ndim not in (3, 4) or t.ndim != n + 1:
        raise ValueError(f"{name} must be a single sample (C, H, W[, D]) with {n} spatial dims, got {tuple(t.shape)}.")
    if spatial is not None and tuple(t.shape[1:]) != spatial:
        raise ValueError(f"{name} must have the spatial size {spatial}, got shape {tuple(t.shape)}.")
    if channels is not None and t.shape[0] != channels:
        raise ValueError(f"{name} must have {channels} channel(s), got shape {tuple(t.shape)}.")
    return t


def _compute_panels(
    fixed: torch.Tensor | None,
    moving: torch.Tensor | None,
    warped: torch.Tensor | None,
    weight: torch.Tensor | None,
    ddf: torch.Tensor | None,
    axis: int,
    grid_spacing: int,
    grid_thickness: int,
    eps: float,
) -> tuple[dict[str, torch.Tensor], int | None]:
    """2D float panels ``(H', W')`` of the given inputs, and the number of folded voxels in the shown slice."""
    inputs = {"fixed": fixed, "moving": moving, "warped": warped, "weight": weight}
    spatial: tuple[int, ...] | None = None
    checked: dict[str, torch.Tensor] = {}
    for name, x in inputs.items():
        if x is None:
            continue
        t = _check_single(x, name, spatial, 1 if name == "weight" else None)
        spatial = tuple(t.shape[1:])
        checked[name] = t[:1]  # multi-channel images: the first channel is shown
    field = None
    if ddf is not None:
        field = _check_single(ddf, "ddf", spatial, None)
        spatial = tuple(field.shape[1:])
        if field.shape[0] != len(spatial):
            raise ValueError(f"ddf must be (N, *S) with N = {len(spatial)} channels, got shape {tuple(field.shape)}.")
    if spatial is None:
        raise ValueError("at least one of fixed, moving, warped, weight or ddf must be given, got none.")
    n = len(spatial)
    a = _spatial_axis(axis, n) if n == 3 else None

    def view(x: torch.Tensor) -> torch.Tensor:
        return central_slices(x, axis=-1 if a is None else a)[0]

    panels = {name: view(t) for name, t in checked.items()}
    if "fixed" in checked and "warped" in checked:
        panels["difference"] = view((checked["warped"] - checked["fixed"]).abs())
    folded = None
    if field is not None:
        in_plane = None if a is None else tuple(i for i in range(3) if i != a)
        grid = deformed_grid(field[None], spacing=grid_spacing, thickness=grid_thickness, axes=in_plane)[0]
        panels["deformed_grid"] = view(grid)
        det = view(jacobian_determinant(torch.nan_to_num(field)[None])[0])
        panels["log_jacobian"] = torch.log(torch.clamp(det, min=eps))
        folded = int((det <= 0).sum())
    return {k: panels[k] for k in PANEL_NAMES if k in panels}, folded


def _weight_limits(values: torch.Tensor) -> tuple[float, float]:
    """``(0, 1)`` when the weights lie in ``[0, 1]`` (e.g. a Beta head), otherwise their range."""
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    if hi <= lo:
        return lo - 0.5, hi + 0.5
    return lo, hi


def _value_range(values: torch.Tensor) -> tuple[float, float]:
    """The finite range of ``values``, widened to ``[v - 1e-3, v + 1e-3]`` for a constant map."""
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo - 1e-3, hi + 1e-3)


def _jacobian_limit(log_j: torch.Tensor, eps: float) -> float:
    """Symmetric colour limit: ``max |log det J|`` over the unfolded voxels, at least ``1e-3``."""
    unfolded = log_j[torch.isfinite(log_j) & (log_j > math.log(eps))]
    if unfolded.numel() == 0:
        return 1.0
    return max(float(unfolded.abs().max()), 1e-3)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = x.min(), x.max()
    if hi <= lo:
        return torch.zeros_like(x)
    return (x - lo) / (hi - lo)


def tensorboard_slices(
    fixed: torch.Tensor | None = None,
    moving: torch.Tensor | None = None,
    warped: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    ddf: torch.Tensor | None = None,
    axis: int = -1,
    grid_spacing: int = 8,
    grid_thickness: int = 1,
    jacobian_limit: float | None = None,
    eps: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """Panels of one pair as ``(1, H', W')`` float images in ``[0, 1]`` for ``SummaryWriter.add_image``.

    Use as ``writer.add_image(name, image, step, dataformats="CHW")``. Only the panels whose inputs are given are
    returned (``difference`` needs ``fixed`` and ``warped``; ``deformed_grid`` and ``log_jacobian`` need ``ddf``).
    Intensity mapping to ``[0, 1]``:

    - ``fixed``, ``moving``, ``warped``: min-max normalised, each panel on its own;
    - ``difference``: ``|warped - fixed|`` min-max normalised;
    - ``weight``: not normalised when it lies in ``[0, 1]`` (a Beta head), so that colours are comparable across
      steps; otherwise mapped from its range;
    - ``deformed_grid``: already in ``[0, 1]``;
    - ``log_jacobian``: ``[-L, L]`` mapped linearly to ``[0, 1]`` (0.5 = no volume change, 0 = compression by
      ``exp(-L)`` or folding), ``L = jacobian_limit`` or ``max |log det J|`` of the unfolded voxels shown.

    Args:
        fixed: ``(C, H, W[, D])`` fixed image (the first channel is shown).
        moving: ``(C, H, W[, D])`` moving image (the first channel is shown).
        warped: ``(C, H, W[, D])`` warped moving image (the first channel is shown).
        weight: ``(1, H, W[, D])`` regularisation weight map lambda(x).
        ddf: ``(N, H, W[, D])`` displacement in voxels.
        axis: spatial axis along which a 3D volume is sliced (central slice); default the last.
        grid_spacing: grid line spacing in voxels.
        grid_thickness: grid line width in voxels.
        jacobian_limit: fixed symmetric limit ``L`` of ``log det J``; default: from the data.
        eps: lower clamp of ``det J`` before the logarithm.

    Returns:
        dict panel name (see :data:`PANEL_NAMES`) -> ``(1, H', W')`` float32 CPU tensor in ``[0, 1]``.
    """
    panels, _ = _compute_panels(fixed, moving, warped, weight, ddf, axis, grid_spacing, grid_thickness, eps)
    out: dict[str, torch.Tensor] = {}
    for name, p in panels.items():
        if name == "weight":
            lo, hi = _weight_limits(p)
            img = torch.clamp((torch.nan_to_num(p, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
        elif name == "deformed_grid":
            img = torch.clamp(p, 0.0, 1.0)
        elif name == "log_jacobian":
            limit = jacobian_limit if jacobian_limit is not None else _jacobian_limit(p, eps)
            img = torch.clamp(0.5 + 0.5 * p / limit, 0.0, 1.0)
        else:
            img = _minmax(p)
        out[name] = img[None].to(torch.float32).contiguous()
    return out


def _import_matplotlib() -> tuple[type, type]:
    canvas, has_agg = optional_import("matplotlib.backends.backend_agg", name="FigureCanvasAgg")
    figure, has_figure = optional_import("matplotlib.figure", name="Figure")
    if not (has_agg and has_figure):
        raise OptionalImportError(
            "registration_figure requires matplotlib, which is not installed; install it with `pip install matplotlib`."
        )
    return figure, canvas


def registration_figure(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    warped: torch.Tensor,
    weight: torch.Tensor | None,
    ddf: torch.Tensor | None,
    path: str | os.PathLike,
    title: str | None = None,
    axis: int = -1,
    grid_spacing: int = 8,
    grid_thickness: int = 1,
    weight_limits: Sequence[float] | None = None,
    jacobian_limit: float | None = None,
    eps: float = 1e-6,
    dpi: int = 100,
) -> Path:
    """Save a PNG with the panels of one registered pair (written atomically; parent folders are created).

    Panels: fixed, moving, warped (the three share one grey scale), ``|warped - fixed|``, the weight map
    lambda(x) with a colour bar over the range of the slice shown (so that variation shows even when lambda is
    nearly flat, e.g. within [0.998, 1]; pass ``weight_limits=(0, 1)`` to compare figures), the deformed grid, and
    ``log det J`` with a diverging colour map and symmetric limits ``[-L, L]`` (``L = jacobian_limit`` or
    ``max |log det J|`` over the unfolded voxels shown; folded voxels, counted in the panel title, saturate at
    ``-L``). A missing ``weight`` or ``ddf`` leaves its panels empty.

    Args:
        fixed: ``(C, H, W[, D])`` fixed image (the first channel is shown).
        moving: ``(C, H, W[, D])`` moving image (the first channel is shown).
        warped: ``(C, H, W[, D])`` moving image warped onto the fixed grid (the first channel is shown).
        weight: ``(1, H, W[, D])`` regularisation weight map, or None.
        ddf: ``(N, H, W[, D])`` displacement in voxels (channel order = array axes), or None.
        path: destination ``.png`` file.
        title: figure title.
        axis: spatial axis along which 3D volumes are sliced (central slice); default the last.
        grid_spacing: grid line spacing in voxels.
        grid_thickness: grid line width in voxels.
        weight_limits: ``(vmin, vmax)`` of the weight colour bar; default as described above.
        jacobian_limit: symmetric limit ``L`` of ``log det J``; default from the data.
        eps: lower clamp of ``det J`` before the logarithm.
        dpi: resolution of the PNG.

    Returns:
        the written path.

    Raises:
        ValueError: on inputs of inconsistent or wrong shapes, or a ``path`` that does not end with ``.png``.
        ImportError: when matplotlib is not installed.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end with '.png', got {str(path)!r}.")
    if weight_limits is not None and (len(weight_limits) != 2 or not weight_limits[0] < weight_limits[1]):
        raise ValueError(f"weight_limits must be (vmin, vmax) with vmin < vmax, got {weight_limits!r}.")
    figure_cls, canvas_cls = _import_matplotlib()
    panels, folded = _compute_panels(fixed, moving, warped, weight, ddf, axis, grid_spacing, grid_thickness, eps)

    images = [panels[k] for k in ("fixed", "moving", "warped")]
    finite = torch.cat([im[torch.isfinite(im)] for im in images])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1.0

    fig = figure_cls(figsize=(13.0, 6.6), dpi=dpi)
    canvas_cls(fig)
    axes = fig.subplots(2, 4)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, name in zip(axes.flat, PANEL_NAMES):
        ax.set_title(_TITLES[name], fontsize=10)
        if name not in panels:
            ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes, color="0.5")
            continue
        p = panels[name].numpy()
        if name in ("fixed", "moving", "warped"):
            ax.imshow(p, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        elif name == "difference":
            im = ax.imshow(p, cmap="magma", vmin=0.0, interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        elif name == "weight":
            lo, hi = weight_limits if weight_limits is not None else _value_range(panels[name])
            im = ax.imshow(p, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        elif name == "deformed_grid":
            ax.imshow(p, cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
        else:
            limit = jacobian_limit if jacobian_limit is not None else _jacobian_limit(panels[name], eps)
            im = ax.imshow(p, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title(f"{_TITLES[name]} ({folded} folded)", fontsize=10)
    axes.flat[-1].set_axis_off()
    spatial = tuple(panels["fixed"].shape)
    n = fixed.ndim - 1
    where = "" if n == 2 else f", central slice along axis {_spatial_axis(axis, 3)}"
    axes.flat[-1].text(0, 0.5, f"slice {spatial[0]} x {spatial[1]}{where}", fontsize=9, va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return path
