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
"""The bundle's side of the hyper model: its ``hyper`` setting entry, and its grid search over the codes.

A bundle names a setting of the hyper model as a ``"hyper"`` config entry (``hyper#codes`` or the prior's
parameter and ``hyper#lambda_max``, see :func:`resolve_hyper_setting`); the grid search
(:class:`EvaluatorGridSearch`, on :func:`svreg_monai.tuning.grid_search`) writes its best setting back as such an
entry, a config layer (:func:`best_codes_layer`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svreg_monai.engines.hyper import FixedHyperSampler, ReferenceHyperMapping
from svreg_monai.priors import PRIOR_REGISTRY
from svreg_monai.tuning.grid import (
    DEFAULT_GRID_METRICS,
    GridSearchResult,
    code_grid,
    evaluator_objective,
    grid_search,
    hyper_grid_outputs,
    save_grid_search,
)
from svreg_monai.utils.io import file_stem, write_json
from svreg_monai.utils.validation import check_flag, check_number
from svreg_monai.visualize.hyper import hyperparameter_grid_figure

__all__ = ["EvaluatorGridSearch", "best_codes_layer", "resolve_hyper_setting"]

logger = logging.getLogger(__name__)


def _code_row(codes: Any, name: str) -> list[float]:
    row = torch.as_tensor(codes, dtype=torch.float64).flatten() if not isinstance(codes, str) else None
    if row is None or row.numel() != 2 or not bool(torch.isfinite(row).all()):
        raise ValueError(f"{name} must be two finite numbers [b, r], got {codes!r}.")
    return row.tolist()


def resolve_hyper_setting(mapping: ReferenceHyperMapping, hyper: Mapping[str, Any]) -> list[float]:
    """Codes of a setting given as in a bundle's ``"hyper"`` config entry.

    ``hyper`` may hold ``codes`` (``[b, r]``), the prior parameter (``alpha`` for the Beta prior,
    ``inv_sigma2`` for the Gaussian prior), ``lambda_max`` and ``extrapolate``; ``None`` entries are ignored.
    ``codes`` gives both codes; the prior parameter replaces the first, ``lambda_max`` the second, so
    ``{"codes": [0.5, 0.2], "lambda_max": 2.0}`` means ``b = 0.5`` and ``lambda_max = 2``. ``extrapolate``
    may be a bool or a command-line string (``"true"``/``"false"``, see :func:`~svreg_monai.utils.check_flag`).

    Args:
        mapping: the code <-> hyperparameter mapping of the network.
        hyper: the setting.

    Returns:
        ``[b, r]``.

    Raises:
        ValueError: for unknown keys, a parameter of another prior, a missing code, or codes / values outside
            the trained range (naming the value and the range) unless ``hyper["extrapolate"]`` is true.
    """
    parameters = sorted({cls.parameter for cls in PRIOR_REGISTRY.values()})
    allowed = ["codes", *parameters, "lambda_max", "extrapolate"]
    if not isinstance(hyper, Mapping):
        raise ValueError(f"hyper must be a mapping with keys among {allowed}, got {hyper!r}.")
    unknown = sorted(set(hyper) - set(allowed))
    if unknown:
        raise ValueError(f"hyper has unknown keys {unknown}; allowed: {allowed}.")
    extrapolate = check_flag(hyper.get("extrapolate") or False, "hyper#extrapolate")
    for other in parameters:
        if other != mapping.prior_name and hyper.get(other) is not None:
            raise ValueError(
                f"hyper#{other}={hyper[other]!r} does not apply to the {mapping.prior} prior; set "
                f"hyper#{mapping.prior_name}."
            )
    codes: list[float | None] = [None, None]
    if hyper.get("codes") is not None:
        row = _code_row(hyper["codes"], "hyper#codes")
        if not extrapolate and any(not 0.0 <= c <= 1.0 for c in row):
            raise ValueError(
                f"hyper#codes must lie in the trained range [0, 1], got {row}; set hyper#extrapolate "
                "to true to use codes outside it."
            )
        codes = list(row)
    for col, name in enumerate(mapping.space.names):
        if hyper.get(name) is not None:
            value = check_number(hyper[name], f"hyper#{name}")
            try:
                codes[col] = float(mapping.space.code_of(name, value, extrapolate)[0])
            except ValueError as e:
                raise ValueError(f"hyper#{name}: {e} In a bundle: --hyper#extrapolate true.") from None
    if codes[0] is None or codes[1] is None:
        missing = [n for n, c in zip(mapping.space.names, codes) if c is None]
        raise ValueError(
            f"hyper must give hyper#codes [b, r] or hyper#{mapping.prior_name} and hyper#lambda_max; "
            f"missing: {missing} (received {dict(hyper)})."
        )
    # drop float rounding noise (0.5000000000000004) so that names and JSON files read cleanly
    return [round(float(codes[0]), 10), round(float(codes[1]), 10)]


def best_codes_layer(codes: Sequence[float]) -> dict[str, Any]:
    """The config layer that selects ``codes`` for ``hyper_inference.json``/``hyper_register.json``:
    ``{"hyper#codes": [b, r]}``, with ``"hyper#extrapolate": true`` for codes outside ``[0, 1]`` so that the layer
    is usable as it is."""
    row = _code_row(codes, "codes")
    layer: dict[str, Any] = {"hyper#codes": row}
    if any(not 0.0 <= c <= 1.0 for c in row):
        layer["hyper#extrapolate"] = True
    return layer


class EvaluatorGridSearch:
    """Grid search of a bundle: run the validation evaluator over a grid of codes and save the landscapes.

    :meth:`run` evaluates ``code_grid(start, stop, step)`` along both codes with :func:`evaluator_objective`,
    selects the best setting (:meth:`GridSearchResult.best`), logs it, writes the files of
    :func:`save_grid_search` into ``output_dir`` and the config layer ``best_codes.json`` (:func:`best_codes_layer`),
    and, with ``figure_codes``, the figure ``hyper_grid_figure.png`` of the λ maps and deformed grids of the first
    validation pair over ``figure_codes x figure_codes``.

    Args:
        evaluator: the MONAI evaluator (its handlers should load the trained hyper model, e.g. a
            ``CheckpointLoader``).
        sampler: the evaluator's :class:`~svreg_monai.engines.FixedHyperSampler`.
        mapping: the code -> hyperparameter mapping the network was trained with.
        output_dir: destination folder.
        start: first code of the grid (both axes).
        stop: last code of the grid.
        step: grid spacing (reference: 0.02 over ``[0, 1.08]``).
        extrapolate: allow codes outside ``[0, 1]`` (the network must be called with ``extrapolate=True`` too).
        metrics: short name -> evaluator metric name; default :data:`DEFAULT_GRID_METRICS`.
        select: metric that defines the best setting.
        mode: ``"max"`` or ``"min"`` for ``select``.
        ndv_limit: only settings with NDV (metric ``"ndv"``) at most this value can be best; None for no limit.
        figure_codes: codes of both axes of the λ-map figure; None or empty for no figure.
    """

    def __init__(
        self,
        evaluator: Any,
        sampler: FixedHyperSampler,
        mapping: ReferenceHyperMapping,
        output_dir: str | os.PathLike,
        start: float = 0.0,
        stop: float = 1.0,
        step: float = 0.25,
        extrapolate: bool = False,
        metrics: Mapping[str, str] | None = None,
        select: str = "dice",
        mode: str = "max",
        ndv_limit: float | None = None,
        figure_codes: Sequence[float] | None = (0.1, 0.5, 1.0),
    ) -> None:
        self.codes = code_grid(start, stop, step)
        self.evaluator = evaluator
        self.sampler = sampler
        self.mapping = mapping
        self.output_dir = Path(output_dir)
        self.extrapolate = check_flag(extrapolate, "extrapolate")
        self.metrics = dict(metrics or DEFAULT_GRID_METRICS)
        if select not in self.metrics:
            raise ValueError(f"select must be one of the recorded metrics {sorted(self.metrics)}, got {select!r}.")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.select = select
        self.mode = mode
        self.ndv_limit = ndv_limit
        self.figure_codes = [float(c) for c in (figure_codes or ())]
        self.result: GridSearchResult | None = None
        self.best: dict[str, Any] | None = None

    def run(self) -> dict[str, Any]:
        """Run the search; returns ``grid_search.json``'s content plus ``"files"`` (kind -> path)."""
        logger.info(
            f"grid search over {self.codes.size} x {self.codes.size} codes in [{self.codes[0]:g}, {self.codes[-1]:g}]"
            f" ({self.mapping}); writing to {self.output_dir}"
        )
        objective = evaluator_objective(self.evaluator, self.sampler, self.metrics)
        self.result = grid_search(objective, self.codes, self.codes, self.mapping, self.extrapolate)
        self.best = self.result.best(self.select, self.mode, self.ndv_limit)
        if self.best is None:
            logger.warning(f"grid search: no setting has a finite {self.select} with ndv <= {self.ndv_limit}.")
        else:
            shown = ", ".join(f"{k} {self.best[k]:.4f}" for k in self.metrics)
            logger.info(
                f"grid search best ({self.mode} {self.select}): codes {self.best['codes']} = "
                f"{self.result.prior_name} {self.best[self.result.prior_name]:.4g}, lambda_max "
                f"{self.best['lambda_max']:.4g}: {shown}"
            )
        report = {"select": self.select, "mode": self.mode, "ndv_limit": self.ndv_limit, "metric_names": self.metrics}
        files = save_grid_search(self.result, self.output_dir, self.best, report)
        if self.best is not None:
            files["best_codes"] = write_json(self.output_dir / "best_codes.json", best_codes_layer(self.best["codes"]))
        if self.figure_codes:
            files["figure"] = self.figure(self.output_dir / "hyper_grid_figure.png")
        for kind, path in files.items():
            logger.info(f"grid search wrote {kind}: {path}")
        return {"best": self.best, "files": {k: str(v) for k, v in files.items()}}

    def figure(self, path: str | os.PathLike) -> Path:
        """λ maps and deformed grids of the first pair of the evaluator's data over ``figure_codes``."""
        if not self.figure_codes:
            raise ValueError("figure_codes is empty; give the codes of the figure's rows and columns.")
        evaluator = self.evaluator
        network = evaluator.network
        device = getattr(evaluator.state, "device", None) or next(network.parameters()).device
        batch = next(iter(evaluator.data_loader))
        moving, _, args, kwargs = evaluator.prepare_batch(batch, device)
        weights, ddfs = hyper_grid_outputs(
            network,
            moving[:1],
            args[0][:1],
            self.figure_codes,
            self.figure_codes,
            inferer=getattr(evaluator, "inferer", None),
            **kwargs,
        )
        b = np.asarray(self.figure_codes)
        values = self.mapping.hyperparameters(np.stack([b, b], 1), extrapolate=True)
        rows = self.mapping.space.prior.to_display(values[self.mapping.prior_name].double().numpy())
        meta = getattr(batch.get("fixed"), "meta", None) if isinstance(batch, Mapping) else None
        name = ""
        if isinstance(meta, Mapping) and meta.get("filename_or_obj") is not None:
            source = meta["filename_or_obj"]
            name = f": fixed {file_stem(str(source[0] if isinstance(source, (list, tuple)) else source))}"
        return hyperparameter_grid_figure(
            weights,
            ddfs,
            rows,
            values["lambda_max"].double().numpy(),
            path,
            row_label=self.mapping.space.prior.display_name,
            col_label="λ_max",
            title=f"test-time control of the regularisation{name}",
        )
