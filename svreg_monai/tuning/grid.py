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
"""Grid search over the codes of a hyper-conditioned network: landscapes of validation metrics, best setting.

A network trained for a continuum of regularisation settings
(:class:`~svreg_monai.networks.nets.HyperTransMorphTVFSPR`) is evaluated at every point ``(b, r)`` of a grid of
codes, without retraining; the reference scans ``[0, 1.08]^2`` in steps of 0.02. The functional core is
:func:`grid_search`, which calls any ``objective(codes) -> {metric: value}``; :func:`evaluator_objective` makes
one from a MONAI evaluator whose ``prepare_batch`` draws its codes from a
:class:`~svreg_monai.engines.FixedHyperSampler`. :func:`save_grid_search` writes the landscape (``.npz``, CSV,
heatmap PNGs, a JSON report with the best codes) and :func:`hyper_grid_outputs` computes, for one pair, the λ maps
and displacements of a small grid of settings for :func:`~svreg_monai.visualize.hyperparameter_grid_figure`.
The bundle's grid search, which wires all of it, is :class:`svreg_monai.apps.EvaluatorGridSearch`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svreg_monai.engines.hyper import FixedHyperSampler, ReferenceHyperMapping
from svreg_monai.priors import get_prior
from svreg_monai.utils.io import atomic_write, write_csv, write_json
from svreg_monai.visualize.hyper import landscape_figure

__all__ = [
    "DEFAULT_GRID_METRICS",
    "GridSearchResult",
    "code_grid",
    "evaluator_objective",
    "grid_search",
    "hyper_grid_outputs",
    "save_grid_search",
]

logger = logging.getLogger(__name__)

DEFAULT_GRID_METRICS = {"dice": "val_mean_dice", "ndv": "val_ndv"}
"""Short metric name -> evaluator metric name (``engine.state.metrics``) recorded by default."""

_COLUMNS = ("b_code", "r_code")


def code_grid(start: float = 0.0, stop: float = 1.0, step: float = 0.25) -> np.ndarray:
    """Codes ``start, start + step, ...`` up to ``stop`` inclusive (when ``stop`` lies on the grid).

    Values are rounded to 10 decimals, so ``code_grid(0, 1.08, 0.02)`` gives the reference's 55 values exactly.

    Args:
        start: first code.
        stop: last code (included when ``(stop - start) / step`` is an integer up to rounding).
        step: spacing, ``> 0``.

    Returns:
        ``(K,)`` float64 array.

    Raises:
        ValueError: for non-finite values, ``step <= 0`` or ``stop < start``.
    """
    for name, v in (("start", start), ("stop", stop), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"grid {name} must be a finite number, got {v!r}.")
    if step <= 0:
        raise ValueError(f"grid step must be > 0, got {step!r}.")
    if stop < start:
        raise ValueError(f"grid stop must be >= start, got start={start!r}, stop={stop!r}.")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    return np.round(start + step * np.arange(count, dtype=np.float64), 10)


@dataclass
class GridSearchResult:
    """Metric landscapes over a grid of codes.

    Attributes:
        b_codes: ``(R,)`` codes of the prior parameter (rows).
        r_codes: ``(C,)`` codes of ``lambda_max`` (columns).
        metrics: metric name -> ``(R, C)`` values (NaN where the objective returned none).
        prior: the prior's registered name (``"beta"``, ``"gaussian"``...).
        prior_name: its parameter's name (``"alpha"``, ``"inv_sigma2"``...).
        prior_values: ``(R,)`` prior parameter of each row.
        lambda_values: ``(C,)`` ``lambda_max`` of each column.
    """

    b_codes: np.ndarray
    r_codes: np.ndarray
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    prior: str = "beta"
    prior_name: str = "alpha"
    prior_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lambda_values: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def row_values(self) -> np.ndarray:
        """Row values as displayed (:meth:`~svreg_monai.priors.WeightPrior.to_display`: ``alpha - 1`` for the Beta
        prior, ``inv_sigma2`` for the Gaussian prior)."""
        return get_prior(self.prior).to_display(self.prior_values)

    @property
    def row_label(self) -> str:
        """Axis label of the rows (``α − 1``, ``1/σ²``...)."""
        return get_prior(self.prior).display_name

    def setting(self, i: int, j: int) -> dict[str, Any]:
        """``{"codes": [b, r], <prior_name>: ..., "lambda_max": ..., "index": [i, j], <metric>: ...}``."""
        out: dict[str, Any] = {
            "codes": [float(self.b_codes[i]), float(self.r_codes[j])],
            self.prior_name: float(self.prior_values[i]),
            "lambda_max": float(self.lambda_values[j]),
            "index": [int(i), int(j)],
        }
        out.update({name: float(values[i, j]) for name, values in self.metrics.items()})
        return out

    def best(
        self, metric: str = "dice", mode: str = "max", ndv_limit: float | None = None, ndv_metric: str = "ndv"
    ) -> dict[str, Any] | None:
        """The best grid point by ``metric``, optionally among the points with ``ndv_metric <= ndv_limit``.

        Args:
            metric: metric to optimise.
            mode: ``"max"`` or ``"min"``.
            ndv_limit: largest admissible value of ``ndv_metric`` (e.g. 0.0 for no non-diffeomorphic volume);
                None for no constraint.
            ndv_metric: the constrained metric.

        Returns:
            :meth:`setting` of the best point, or None when no point has a finite value within the limit.

        Raises:
            ValueError: for an unknown metric or mode.
        """
        if metric not in self.metrics:
            raise ValueError(f"metric {metric!r} was not recorded; recorded: {sorted(self.metrics)}.")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        values = np.array(self.metrics[metric], dtype=np.float64)
        valid = np.isfinite(values)
        if ndv_limit is not None:
            if ndv_metric not in self.metrics:
                raise ValueError(f"ndv_limit needs the metric {ndv_metric!r}; recorded: {sorted(self.metrics)}.")
            valid &= np.nan_to_num(self.metrics[ndv_metric], nan=np.inf) <= ndv_limit
        if not valid.any():
            return None
        scores = np.where(valid, values if mode == "max" else -values, -np.inf)
        i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
        return self.setting(int(i), int(j))

    def rows(self) -> list[dict[str, Any]]:
        """One dict per grid point: codes, hyperparameters and metrics (row-major)."""
        out = []
        for i, b in enumerate(self.b_codes):
            for j, r in enumerate(self.r_codes):
                row = {
                    "b_code": float(b),
                    "r_code": float(r),
                    self.prior_name: float(self.prior_values[i]),
                    "lambda_max": float(self.lambda_values[j]),
                }
                row.update({name: float(v[i, j]) for name, v in self.metrics.items()})
                out.append(row)
        return out


def _as_codes(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be a non-empty sequence of finite codes, got {values!r}.")
    return arr


def grid_search(
    objective: Callable[[list[float]], Mapping[str, float]],
    b_codes: Sequence[float] | np.ndarray,
    r_codes: Sequence[float] | np.ndarray,
    mapping: ReferenceHyperMapping | None = None,
    extrapolate: bool = False,
) -> GridSearchResult:
    """Evaluate ``objective([b, r])`` at every point of ``b_codes x r_codes`` (row-major), logging progress.

    Args:
        objective: returns a dict of metric values for one setting of codes; every call must return the same
            metric names.
        b_codes: ``(R,)`` codes of the prior parameter.
        r_codes: ``(C,)`` codes of ``lambda_max``.
        mapping: code -> hyperparameter mapping (for the values stored with the result and logged); default the
            reference's Beta-prior mapping.
        extrapolate: accept codes outside ``[0, 1]``, the range the network was trained on.

    Returns:
        the landscapes.

    Raises:
        ValueError: for codes outside ``[0, 1]`` (unless ``extrapolate``), naming the range, or when the
            objective's metric names change between calls.
    """
    b, r = _as_codes(b_codes, "b_codes"), _as_codes(r_codes, "r_codes")
    if not extrapolate:
        for name, arr in (("b_codes", b), ("r_codes", r)):
            if arr.min() < 0 or arr.max() > 1:
                raise ValueError(
                    f"{name} must lie in the trained range [0, 1], got [{arr.min():g}, {arr.max():g}]; "
                    "set extrapolate=True to evaluate outside it."
                )
    mapping = mapping or ReferenceHyperMapping()
    prior_values = mapping.hyperparameters(np.stack([b, np.zeros_like(b)], 1), extrapolate=True)[mapping.prior_name]
    lambda_values = mapping.hyperparameters(np.stack([np.zeros_like(r), r], 1), extrapolate=True)["lambda_max"]
    result = GridSearchResult(
        b_codes=b,
        r_codes=r,
        prior=mapping.prior,
        prior_name=mapping.prior_name,
        prior_values=prior_values.double().numpy(),
        lambda_values=lambda_values.double().numpy(),
    )
    total = b.size * r.size
    for i, bi in enumerate(b):
        for j, rj in enumerate(r):
            values = dict(objective([float(bi), float(rj)]))
            if not result.metrics:
                if not values:
                    raise ValueError("the objective returned no metric.")
                result.metrics = {name: np.full((b.size, r.size), np.nan) for name in values}
            elif set(values) != set(result.metrics):
                raise ValueError(
                    f"the objective returned the metrics {sorted(values)} at codes ({bi:g}, {rj:g}), but "
                    f"{sorted(result.metrics)} before."
                )
            for name, value in values.items():
                result.metrics[name][i, j] = float(value) if value is not None else np.nan
            shown = ", ".join(f"{k} {float(result.metrics[k][i, j]):.4f}" for k in result.metrics)
            logger.info(
                f"grid point {i * r.size + j + 1}/{total}: codes ({bi:g}, {rj:g}) = {mapping.prior_name} "
                f"{result.prior_values[i]:.4g}, lambda_max {result.lambda_values[j]:.4g}: {shown}"
            )
    return result


def evaluator_objective(
    evaluator: Any, sampler: FixedHyperSampler, metrics: Mapping[str, str] | None = None
) -> Callable[[list[float]], dict[str, float]]:
    """An objective for :func:`grid_search` that runs a MONAI evaluator at the given codes.

    Args:
        evaluator: an Ignite/MONAI evaluator (``run()``, ``state.metrics``) whose ``prepare_batch`` takes its codes
            from ``sampler`` (e.g. a :class:`~svreg_monai.engines.RegistrationPrepareBatch` with
            ``hyper_sampler=sampler``).
        sampler: the sampler whose :attr:`~svreg_monai.engines.FixedHyperSampler.codes` are set before each run.
        metrics: short name -> evaluator metric name; default :data:`DEFAULT_GRID_METRICS`.

    Returns:
        ``objective(codes) -> {short name: value}``.

    Raises:
        ValueError: (when called) if the evaluator did not compute a requested metric.
    """
    metrics = dict(metrics or DEFAULT_GRID_METRICS)
    if not metrics:
        raise ValueError("metrics must name at least one evaluator metric, got an empty mapping.")

    def objective(codes: list[float]) -> dict[str, float]:
        sampler.codes = codes
        evaluator.run()
        state_metrics = evaluator.state.metrics
        missing = [m for m in metrics.values() if m not in state_metrics]
        if missing:
            raise ValueError(f"the evaluator computed no {missing}; it computed {sorted(state_metrics)}.")
        return {short: float(state_metrics[name]) for short, name in metrics.items()}

    return objective


def save_grid_search(
    result: GridSearchResult,
    output_dir: str | os.PathLike,
    best: Mapping[str, Any] | None = None,
    report: Mapping[str, Any] | None = None,
    heatmaps: bool = True,
) -> dict[str, Path]:
    """Write a grid search's landscapes and best setting into ``output_dir`` (created if missing), atomically.

    Files:

    - ``grid_search.npz``: ``b_codes`` ``(R,)``, ``r_codes`` ``(C,)``, ``<prior_name>`` ``(R,)``,
      ``lambda_max`` ``(C,)`` and one ``(R, C)`` array per metric;
    - ``grid_search.csv``: one row per grid point (codes, hyperparameters, metrics);
    - ``<metric>.png``: a heatmap per metric (rows ``alpha - 1`` or ``1/sigma^2``, columns ``lambda_max``), the best
      point marked;
    - ``grid_search.json``: the grid, the best setting and ``report``'s entries.

    Args:
        result: the landscapes.
        output_dir: destination folder.
        best: the best setting (:meth:`GridSearchResult.best`), or None.
        report: further entries of ``grid_search.json`` (e.g. the selection rule).
        heatmaps: write the PNGs (needs matplotlib).

    Returns:
        file kind (``"npz"``, ``"csv"``, ``"json"``, ``"<metric>_png"``) -> path.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    reserved = {"b_codes", "r_codes", result.prior_name, "lambda_max"}
    clash = sorted(reserved & set(result.metrics))
    if clash:
        raise ValueError(f"metric names {clash} clash with the grid arrays {sorted(reserved)}.")
    paths: dict[str, Path] = {}
    arrays = {
        "b_codes": result.b_codes,
        "r_codes": result.r_codes,
        result.prior_name: result.prior_values,
        "lambda_max": result.lambda_values,
        **result.metrics,
    }
    paths["npz"] = out / "grid_search.npz"
    with atomic_write(paths["npz"], "wb") as f:
        np.savez(f, **arrays)
    paths["csv"] = write_csv(out / "grid_search.csv", result.rows())
    index = tuple(best["index"]) if best is not None else None
    if heatmaps:
        for name, values in result.metrics.items():
            paths[f"{name}_png"] = landscape_figure(
                values,
                result.row_values,
                result.lambda_values,
                out / f"{name}.png",
                title=f"validation {name}",
                row_label=result.row_label,
                col_label="λ_max",
                colorbar_label=name,
                cmap="viridis" if name != "ndv" else "magma",
                best=index,  # type: ignore[arg-type]
            )
    document: dict[str, Any] = {
        "prior": result.prior_name,
        "b_codes": result.b_codes,
        "r_codes": result.r_codes,
        result.prior_name: result.prior_values,
        "lambda_max": result.lambda_values,
        "metrics": sorted(result.metrics),
        **dict(report or {}),
        "best": dict(best) if best is not None else None,
    }
    paths["json"] = write_json(out / "grid_search.json", document)
    return paths


@torch.no_grad()
def hyper_grid_outputs(
    network: Callable[..., Any],
    moving: torch.Tensor,
    fixed: torch.Tensor,
    b_codes: Sequence[float],
    r_codes: Sequence[float],
    inferer: Callable[..., Any] | None = None,
    **network_kwargs: Any,
) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """λ maps and displacements of one pair at every setting ``(b_codes[i], r_codes[j])``.

    Args:
        network: a hyper-conditioned network, called as ``network(moving, fixed, codes, **network_kwargs)``
            (through ``inferer(moving, network, fixed, codes, **network_kwargs)`` when given) and returning a
            :class:`~svreg_monai.networks.nets.RegistrationOutput`.
        moving: ``(1, C, *S)`` moving image.
        fixed: ``(1, C, *S)`` fixed image.
        b_codes: the ``R`` prior-parameter codes (rows).
        r_codes: the ``C`` ``lambda_max`` codes (columns).
        inferer: e.g. :class:`~svreg_monai.inferers.RegistrationInferer`; None calls the network directly.
        network_kwargs: further keyword arguments of the network (e.g. ``extrapolate=True``).

    Returns:
        ``(weights, ddfs)``: ``R`` rows of ``C`` CPU tensors ``(1, *S)`` and ``(N, *S)``.

    Raises:
        ValueError: for a batch other than one pair, or a network output without a λ map.
    """
    if moving.shape[0] != 1 or fixed.shape[0] != 1:
        raise ValueError(f"expected one pair (batch 1), got moving {tuple(moving.shape)}, fixed {tuple(fixed.shape)}.")
    if isinstance(network, torch.nn.Module):
        network.eval()
    weights: list[list[torch.Tensor]] = []
    ddfs: list[list[torch.Tensor]] = []
    for b in b_codes:
        w_row, d_row = [], []
        for r in r_codes:
            codes = torch.tensor([[float(b), float(r)]], dtype=moving.dtype, device=moving.device)
            if inferer is None:
                out = network(moving, fixed, codes, **network_kwargs)
            else:
                out = inferer(moving, network, fixed, codes, **network_kwargs)
            if getattr(out, "weight", None) is None:
                raise ValueError(f"the network must return a RegistrationOutput with a weight map, got {type(out)}.")
            w_row.append(out.weight[0].detach().float().cpu())
            d_row.append(out.ddf[0].detach().float().cpu())
        weights.append(w_row)
        ddfs.append(d_row)
    return weights, ddfs
