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
"""Hyperparameter codes of hyper-conditioned networks: per-iteration samplers and the code -> loss mapping.

A hyper-conditioned network (:class:`~svreg_monai.networks.nets.HyperTransMorphTVFSPR`) is trained for a continuum
of regularisation settings. Each training iteration draws codes ``(b, r) ~ U[0, 1]^2`` per sample
(:class:`UniformHyperSampler`), feeds them to the network and maps them to the loss hyperparameters
(:class:`ReferenceHyperMapping`): the prior parameter (the Beta prior's ``alpha = 1 + 0.2 b`` in the reference, or
the Gaussian prior's ``1 / sigma^2`` over a configurable range) and ``lambda_max = 5 r``. Evaluation and inference
use fixed codes (:class:`FixedHyperSampler`), given directly or converted from ``alpha`` and ``lambda_max``
(:meth:`ReferenceHyperMapping.to_codes`, range-checked).

Both samplers follow the ``hyper_sampler(batch_size, device) -> (B, H)`` protocol and the mapping the
``hyper_to_loss(codes) -> {"lambda_max": (B,), "prior_param": (B,)}`` protocol of
:class:`~svreg_monai.engines.RegistrationPrepareBatch`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from svreg_monai.priors import HyperparameterSpace, WeightPrior
from svreg_monai.utils.io import write_json
from svreg_monai.utils.validation import check_flag, check_number, check_positive_int

__all__ = [
    "FixedHyperSampler",
    "ReferenceHyperMapping",
    "UniformHyperSampler",
    "hyper_setting_name",
    "save_hyper_setting",
]


def _code_row(codes: Any, name: str, num_hyper: int | None = None) -> torch.Tensor:
    """``(H,)`` float64 tensor of finite codes from a sequence, an ``(H,)`` or a ``(1, H)`` tensor."""
    try:
        t = torch.as_tensor(codes, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be a sequence of numbers, got {codes!r}.") from e
    if t.ndim == 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be one row of codes, shape (H,) or (1, H), got shape {tuple(t.shape)}.")
    if num_hyper is not None and t.numel() != num_hyper:
        raise ValueError(f"{name} must hold {num_hyper} codes, got {t.tolist()}.")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()}.")
    return t


def hyper_setting_name(prior_name: str, prior_param: float, lambda_max: float) -> str:
    """File-system friendly name of a setting, e.g. ``hyper_alpha=1.1_lambda_max=2`` (4 significant digits)."""
    return f"hyper_{prior_name}={float(prior_param):.4g}_lambda_max={float(lambda_max):.4g}"


class UniformHyperSampler:
    """Draw hyperparameter codes uniformly and independently per sample: ``codes[i, h] ~ U[low_h, high_h]``.

    Used as the ``hyper_sampler`` of :class:`~svreg_monai.engines.RegistrationPrepareBatch` in hyper training, so
    that every iteration (and every sample of a batch) sees a new regularisation setting.

    Args:
        num_hyper: number ``H`` of codes per sample.
        low: lower bound, one number or ``H`` numbers.
        high: upper bound, one number or ``H`` numbers (each ``> low``).
        seed: seed of the sampler's own ``torch.Generator``, so that the code sequence does not depend on other
            users of the global random state; its state is saved and restored with :meth:`state_dict` (e.g. by
            :class:`~svreg_monai.handlers.TrainingCheckpoint`). ``None`` draws from the global torch generator
            (seeded by ``monai.utils.set_determinism``).

    Raises:
        ValueError: for ``num_hyper < 1``, bounds of the wrong length, or ``low >= high``.
    """

    def __init__(
        self,
        num_hyper: int = 2,
        low: float | Sequence[float] = 0.0,
        high: float | Sequence[float] = 1.0,
        seed: int | None = None,
    ) -> None:
        check_positive_int(num_hyper, "num_hyper")
        self.num_hyper = num_hyper
        self.low = self._bounds(low, "low").float()
        self.high = self._bounds(high, "high").float()
        if not bool((self.low < self.high).all()):
            raise ValueError(
                f"low must be < high for every code, got low={self.low.tolist()}, high={self.high.tolist()}."
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}.")
        self.seed = seed
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator()
            self.generator.manual_seed(seed)

    def _bounds(self, value: float | Sequence[float], name: str) -> torch.Tensor:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return torch.full((self.num_hyper,), check_number(value, name))
        return _code_row(value, name, self.num_hyper)

    def __call__(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Return ``(batch_size, H)`` float32 codes on ``device``."""
        check_positive_int(batch_size, "batch_size")
        u = torch.rand(batch_size, self.num_hyper, generator=self.generator)
        return (self.low + (self.high - self.low) * u).to(device=device)

    def state_dict(self) -> dict[str, Any]:
        """The generator state (empty without a seed, when the global generator is used)."""
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the generator state saved by :meth:`state_dict`."""
        if self.generator is not None and "generator" in state_dict:
            self.generator.set_state(torch.as_tensor(state_dict["generator"], dtype=torch.uint8).cpu())

    def __repr__(self) -> str:
        return f"UniformHyperSampler(num_hyper={self.num_hyper}, low={self.low.tolist()}, high={self.high.tolist()})"


class FixedHyperSampler:
    """Return the same codes for every sample: ``codes`` repeated ``batch_size`` times.

    Used for validation at a fixed setting, inference at a chosen setting, and grid searches (which change
    :attr:`codes` between evaluation runs).

    Args:
        codes: one row of ``H`` codes, a sequence or an ``(H,)`` / ``(1, H)`` tensor.

    Raises:
        ValueError: for codes of another shape or non-finite codes.
    """

    def __init__(self, codes: Sequence[float] | torch.Tensor) -> None:
        self._codes = _code_row(codes, "codes")

    @property
    def codes(self) -> torch.Tensor:
        """The ``(H,)`` codes."""
        return self._codes

    @codes.setter
    def codes(self, codes: Sequence[float] | torch.Tensor) -> None:
        self._codes = _code_row(codes, "codes", self._codes.numel())

    def __call__(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Return ``(batch_size, H)`` float32 codes on ``device``."""
        check_positive_int(batch_size, "batch_size")
        return self._codes.expand(batch_size, -1).to(device=device, dtype=torch.float32)

    def __repr__(self) -> str:
        return f"FixedHyperSampler(codes={self._codes.tolist()})"


class ReferenceHyperMapping:
    """Map codes ``(b, r)`` to the loss hyperparameters of a :class:`~svreg_monai.priors.HyperparameterSpace`.

    The mapping is linear, as the reference's: code 0 -> low, 1 -> high of each range; for the Beta prior's
    default space ``alpha = 1 + 0.2 b`` and ``lambda_max = 5 r``. Calling the mapping gives
    ``{"lambda_max": (B,), "prior_param": (B,)}``, the per-sample overrides that
    :class:`~svreg_monai.losses.RegistrationLoss` reads from the targets (the ``hyper_to_loss`` of
    :class:`~svreg_monai.engines.RegistrationPrepareBatch`). The space must be the one the network was built with
    (the bundle configs pass one ``hyper_space`` to both).

    Args:
        space: the hyperparameter space, or a prior (name or object) for that prior's default space.
        extrapolate: accept codes outside ``[0, 1]`` when called (training codes always lie inside).

    Raises:
        ValueError: for an unknown prior.
    """

    def __init__(self, space: HyperparameterSpace | str | WeightPrior = "beta", extrapolate: bool = False) -> None:
        self.space = space if isinstance(space, HyperparameterSpace) else HyperparameterSpace(space)
        self.extrapolate = bool(extrapolate)

    @property
    def prior(self) -> str:
        """Name of the prior (``"beta"``, ``"gaussian"``...)."""
        return self.space.prior.name

    @property
    def prior_name(self) -> str:
        """Name of the prior parameter set by the first code (``"alpha"``, ``"inv_sigma2"``...)."""
        return self.space.prior.parameter

    @property
    def prior_range(self) -> tuple[float, float]:
        """Range of the prior parameter."""
        return self.space.prior_range

    @property
    def lambda_range(self) -> tuple[float, float]:
        """Range of ``lambda_max``."""
        return self.space.lambda_range

    def hyperparameters(
        self, codes: torch.Tensor | Sequence[float], extrapolate: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """``(B, 2)`` (or ``(2,)``) codes -> ``{prior_name: (B,), "lambda_max": (B,)}``.

        Raises:
            ValueError: for codes outside ``[0, 1]`` (unless ``extrapolate``), non-finite codes or a bad shape.
        """
        return self.space.to_values(codes, self.extrapolate if extrapolate is None else bool(extrapolate))

    def __call__(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 2)`` codes -> ``{"lambda_max": (B,), "prior_param": (B,)}`` for the loss."""
        values = self.hyperparameters(codes)
        return {"lambda_max": values["lambda_max"], "prior_param": values[self.prior_name]}

    def to_codes(
        self, prior_param: float | torch.Tensor, lambda_max: float | torch.Tensor, extrapolate: bool = False
    ) -> torch.Tensor:
        """Prior parameter and ``lambda_max`` -> ``(B, 2)`` codes; see :meth:`HyperparameterSpace.to_codes`."""
        return self.space.to_codes(prior_param, lambda_max, extrapolate)

    def describe(self, codes: Sequence[float] | torch.Tensor, extrapolate: bool = False) -> dict[str, Any]:
        """``{"prior": ..., "codes": [b, r], <prior_name>: ..., "lambda_max": ..., "extrapolate": ...}``."""
        row = _code_row(codes, "codes", 2)
        values = self.hyperparameters(row[None], extrapolate=True)
        return {
            "prior": self.prior,
            "codes": [round(c, 10) for c in row.tolist()],
            self.prior_name: float(values[self.prior_name][0]),
            "lambda_max": float(values["lambda_max"][0]),
            "extrapolate": check_flag(extrapolate, "extrapolate"),
        }

    def setting_name(self, codes: Sequence[float] | torch.Tensor) -> str:
        """Name of the setting of ``codes`` for output folders, e.g. ``hyper_alpha=1.1_lambda_max=2``."""
        d = self.describe(codes)
        return hyper_setting_name(self.prior_name, d[self.prior_name], d["lambda_max"])

    def __repr__(self) -> str:
        return f"ReferenceHyperMapping(space={self.space!r}, extrapolate={self.extrapolate})"


def save_hyper_setting(
    output_dir: str | os.PathLike,
    codes: Sequence[float] | torch.Tensor,
    mapping: ReferenceHyperMapping,
    extrapolate: bool = False,
    name: str = "hyper.json",
) -> Path:
    """Write the setting of ``codes`` (see :meth:`ReferenceHyperMapping.describe`) to ``output_dir/name``.

    The folder is created if missing; the file is written atomically.

    Returns:
        the written path.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_json(out / name, mapping.describe(codes, extrapolate))
