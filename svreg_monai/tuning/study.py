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
"""Optuna pieces of the Bayesian optimisation of the regularisation hyperparameters: search space and study.

The second way of the paper (Chen et al., arXiv:2412.17982) to set the global hyperparameters is a TPE search over
the prior's parameter (``alpha - 1`` for the Beta prior, ``1 / sigma^2`` for the Gaussian prior) and
``lambda_max``. This module holds what does not depend on what a trial trains: the search space of a prior
(:func:`search_space`), the storage (:func:`create_storage`: an RDB URL, SQLite by default, or a journal file that
several worker processes can share) and a seeded study that resumes (:func:`create_study`). The bundle's tuner,
one training per trial, is :class:`svreg_monai.apps.BundleTuner`.

Optuna is an optional dependency (``pip install svreg-monai[tune]``), imported on first use.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import OptionalImportError, optional_import

from svreg_monai.priors import get_prior

__all__ = [
    "SearchParameter",
    "create_storage",
    "create_study",
    "finished_trial_count",
    "import_optuna",
    "search_space",
    "sqlite_url",
    "suggest_parameters",
]

logger = logging.getLogger(__name__)


def import_optuna() -> Any:
    """Import and return :mod:`optuna`, or raise an ImportError that says how to install it."""
    optuna, has_optuna = optional_import("optuna")
    if not has_optuna:
        raise OptionalImportError(
            "Bayesian optimisation of the hyperparameters needs Optuna, which is not installed; install it with "
            "`pip install svreg-monai[tune]` (or `pip install optuna`)."
        )
    return optuna


@dataclass(frozen=True)
class SearchParameter:
    """One float parameter of the search: an Optuna name and its range.

    Attributes:
        name: Optuna parameter name (``alpha_minus_one``, ``lambda_max`` or ``inv_sigma2``).
        low: lower bound.
        high: upper bound, ``> low``.
        log: sample on a log scale (needs ``low > 0``).
    """

    name: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        for bound in (self.low, self.high):
            if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
                raise ValueError(f"{self.name} range must be two finite numbers, got ({self.low!r}, {self.high!r}).")
        if not self.low < self.high:
            raise ValueError(f"{self.name} range must have low < high, got ({self.low!r}, {self.high!r}).")
        if self.low < 0:
            raise ValueError(f"{self.name} must be non-negative, got the range ({self.low!r}, {self.high!r}).")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale {self.name} range needs low > 0, got ({self.low!r}, {self.high!r}).")


def _pair(values: Sequence[float], name: str) -> tuple[float, float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 2:
        raise ValueError(f"{name} must be (low, high), got {values!r}.")
    return values[0], values[1]


def search_space(
    prior: str = "beta",
    alpha_minus_one_range: Sequence[float] = (0.01, 0.2),
    lambda_max_range: Sequence[float] = (0.5, 5.0),
    inv_sigma2_range: Sequence[float] = (0.1, 10.0),
    log_scale: bool = False,
    prior_range: Sequence[float] | None = None,
) -> tuple[SearchParameter, ...]:
    """The parameters searched for ``prior``: its displayed parameter (``alpha_minus_one`` | ``inv_sigma2`` | ...)
    and ``lambda_max``.

    Args:
        prior: a registered prior name; its :attr:`~svreg_monai.priors.WeightPrior.search_parameter` is searched
            (``alpha - 1`` for the Beta prior, ``1 / sigma^2`` for the Gaussian prior).
        alpha_minus_one_range: range of ``alpha - 1`` (Beta prior).
        lambda_max_range: range of ``lambda_max``.
        inv_sigma2_range: range of ``1 / sigma^2`` (Gaussian prior).
        log_scale: sample every parameter on a log scale.
        prior_range: range of the searched prior parameter, in displayed units, for any prior; None takes the
            argument above for the Beta and Gaussian priors, else the prior's ``default_range``.

    Returns:
        the two :class:`SearchParameter`.

    Raises:
        ValueError: for an unknown prior or an invalid range.
    """
    weight_prior = get_prior(prior)
    name = weight_prior.search_parameter
    if prior_range is None:
        known = {"alpha_minus_one": alpha_minus_one_range, "inv_sigma2": inv_sigma2_range}
        prior_range = known.get(name) or tuple(weight_prior.to_display(v) for v in weight_prior.default_range)
    first = SearchParameter(name, *_pair(prior_range, f"{name}_range"), log_scale)
    return first, SearchParameter("lambda_max", *_pair(lambda_max_range, "lambda_max_range"), log_scale)


def suggest_parameters(trial: Any, space: Sequence[SearchParameter]) -> dict[str, float]:
    """Ask an Optuna trial for a value of every parameter of ``space``."""
    return {p.name: float(trial.suggest_float(p.name, p.low, p.high, log=p.log)) for p in space}


def sqlite_url(path: str | os.PathLike) -> str:
    """``sqlite:///<absolute path>`` for an Optuna storage file; its folder is created."""
    p = Path(path).expanduser().resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p}"


def _session_seed(seed: int | None, offset: int) -> int | None:
    """``seed`` for a new study; for a resumed one (``offset`` trials) a seed mixed from both, so that sessions
    neither replay earlier random points nor use consecutive (correlated) seeds."""
    if seed is None or offset == 0:
        return seed
    return int(np.random.SeedSequence([int(seed), int(offset)]).generate_state(1)[0] % (2**31 - 1))


def create_storage(storage: str | os.PathLike | Any, heartbeat_interval: int | None = 60) -> Any:
    """An Optuna storage from a URL, a file path or a storage object.

    - a URL (``sqlite:///...``, ``postgresql://...``, any SQLAlchemy URL): an ``RDBStorage``; with
      ``heartbeat_interval``, the running trials of an interrupted worker are marked failed once their heartbeat is
      older than ``2 * heartbeat_interval`` seconds, and a new trial takes their place;
    - a path ending in ``.db``, ``.sqlite`` or ``.sqlite3``: that SQLite file (:func:`sqlite_url`);
    - any other path (e.g. ``study.log``): a ``JournalStorage`` on that file, Optuna's storage for several worker
      processes on one file system without a database server (no heartbeat);
    - anything else (an Optuna storage object) is returned as it is.

    Several processes may run trials of one study in any of these storages (create the study once before starting
    more workers; SQLite suits a few workers, a journal file or a database server more).

    Raises:
        ValueError: for an empty string.
    """
    optuna = import_optuna()
    if not isinstance(storage, (str, os.PathLike)):
        return storage
    text = os.fspath(storage)
    if not text.strip():
        raise ValueError("storage must be a URL, a file path or an Optuna storage, got an empty string.")
    if "://" not in text:
        path = Path(text).expanduser()
        if path.suffix.lower() not in (".db", ".sqlite", ".sqlite3"):
            from optuna.storages.journal import JournalFileBackend

            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        text = sqlite_url(path)
    if not heartbeat_interval:
        return optuna.storages.RDBStorage(text)
    with warnings.catch_warnings():  # the heartbeat is flagged experimental (unchanged since Optuna 2.9)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            text, heartbeat_interval=int(heartbeat_interval), grace_period=2 * int(heartbeat_interval)
        )


def create_study(
    storage: str | Any,
    study_name: str,
    direction: str = "maximize",
    seed: int | None = 0,
    n_startup_trials: int = 5,
    pruner: Any = None,
    pruner_startup_trials: int = 5,
    pruner_warmup_epochs: int = 1,
    heartbeat_interval: int | None = 60,
) -> Any:
    """Create an Optuna study, or load it when ``storage`` already holds one named ``study_name``.

    The TPE sampler is seeded with ``seed`` for a new study and with a seed mixed from ``seed`` and the number of
    trials already in the study for a resumed one, so that a resumed study does not replay the random start-up
    points of its first session. ``storage`` is read by :func:`create_storage`.

    Args:
        storage: an Optuna storage URL, a storage file (``.db``: SQLite; other suffixes: a journal file) or a
            storage object.
        study_name: name of the study in the storage.
        direction: ``"maximize"`` or ``"minimize"``.
        seed: base seed of the TPE sampler; None for an unseeded one.
        n_startup_trials: random trials before TPE takes over.
        pruner: an Optuna pruner; default ``MedianPruner(pruner_startup_trials, pruner_warmup_epochs)``.
        pruner_startup_trials: finished trials before the median pruner prunes.
        pruner_warmup_epochs: epochs of each trial that are never pruned.
        heartbeat_interval: seconds between heartbeats of a running trial; None disables stale-trial detection.

    Returns:
        the ``optuna.Study``.
    """
    optuna = import_optuna()
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}.")
    storage = create_storage(storage, heartbeat_interval)
    if pruner is None:
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=int(pruner_startup_trials), n_warmup_steps=int(pruner_warmup_epochs)
        )
    study = optuna.create_study(
        storage=storage, study_name=study_name, direction=direction, pruner=pruner, load_if_exists=True
    )
    study.sampler = optuna.samplers.TPESampler(
        seed=_session_seed(seed, len(study.get_trials(deepcopy=False))), n_startup_trials=int(n_startup_trials)
    )
    return study


def finished_trial_count(study: Any) -> int:
    """Number of complete or pruned trials of ``study``."""
    optuna = import_optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))
