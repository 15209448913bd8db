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
"""Bayesian optimisation of the regularisation hyperparameters with Optuna, one bundle training per trial.

The second way of the paper (Chen et al., arXiv:2412.17982) to set the global hyperparameters: a TPE search over
``alpha - 1`` (Beta prior) or ``1 / sigma^2`` (Gaussian prior) and ``lambda_max``, where each trial trains the
bundle's model for a few epochs and is scored by its best validation Dice. Per-epoch values go to a median pruner,
which stops unpromising trials early (the trainer is terminated cleanly and the trial recorded as pruned).

The study lives in a SQLite file, so an interrupted search resumes where it stopped (``load_if_exists``; a trial
cut short is marked failed by Optuna's heartbeat and does not count, so a new trial takes its place). Each trial
trains into its own ``trial_NNNN/`` folder (checkpoints, TensorBoard logs, ``params.json``). After every finished
trial the best parameters are written (atomically) to ``best_params.json``, a config layer for the bundle's
training (``{"alpha": ..., "lambda_max": ...}``), and a summary of all trials to ``study_summary.json``.

Optuna is an optional dependency (``pip install svreg-monai[tune]``), imported on first use.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from monai.utils import OptionalImportError, optional_import

from svreg_monai.priors import PRIOR_REGISTRY, get_prior
from svreg_monai.utils.io import write_json

__all__ = [
    "BundleTuner",
    "EpochMetricReporter",
    "SearchParameter",
    "create_study",
    "finished_trial_count",
    "import_optuna",
    "params_to_config",
    "run_bundle_trial",
    "search_space",
    "sqlite_url",
    "suggest_parameters",
    "write_best_params",
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


def params_to_config(params: Mapping[str, float]) -> dict[str, float]:
    """Optuna parameters -> bundle config ids: a prior's searched value becomes its parameter
    (``alpha_minus_one`` becomes ``alpha = 1 + value``)."""
    searched = {cls().search_parameter: cls() for cls in PRIOR_REGISTRY.values()}
    out: dict[str, float] = {}
    for name, value in params.items():
        if name in searched:
            out[searched[name].parameter] = float(searched[name].from_display(float(value)))
        else:
            out[name] = float(value)
    return out


def _format(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())


def sqlite_url(path: str | os.PathLike) -> str:
    """``sqlite:///<absolute path>`` for an Optuna storage file; its folder is created."""
    p = Path(path).expanduser().resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p}"


class EpochMetricReporter:
    """Report a validation metric to ``callback(epoch, value)`` after every evaluator run; stop on request.

    Attach it to the evaluator that a ``ValidationHandler`` runs at the end of training epochs. On the evaluator's
    ``COMPLETED`` event it reads ``evaluator.state.metrics[metric]``, records ``(trainer epoch, value)`` in
    :attr:`history` and calls ``callback``; when that returns True (e.g. Optuna's ``trial.should_prune()``),
    ``trainer.terminate()`` ends the training cleanly after the current epoch's handlers, and the epoch is kept
    in :attr:`stopped_at`.

    Args:
        trainer: the training engine (its ``state.epoch`` is the reported step).
        metric: name of the evaluator metric.
        callback: ``(epoch, value) -> stop``.
    """

    def __init__(self, trainer: Engine, metric: str, callback: Callable[[int, float], bool] | None = None) -> None:
        self.trainer = trainer
        self.metric = metric
        self.callback = callback
        self.history: list[tuple[int, float]] = []
        self.stopped_at: int | None = None

    def attach(self, evaluator: Engine) -> None:
        """Call this reporter at the evaluator's ``COMPLETED`` event."""
        evaluator.add_event_handler(Events.COMPLETED, self)

    def __call__(self, evaluator: Engine) -> None:
        metrics = evaluator.state.metrics
        if self.metric not in metrics:
            raise ValueError(f"the evaluator computed no {self.metric!r}; it computed {sorted(metrics)}.")
        value, epoch = float(metrics[self.metric]), int(self.trainer.state.epoch)
        self.history.append((epoch, value))
        if self.callback is not None and self.callback(epoch, value):
            self.stopped_at = epoch
            self.trainer.terminate()


def run_bundle_trial(
    config_files: Sequence[str | os.PathLike],
    overrides: Mapping[str, Any],
    callback: Callable[[int, float], bool] | None = None,
    metric: str = "val_mean_dice",
    trainer_id: str = "train#trainer",
    evaluator_id: str = "validate#evaluator",
) -> list[tuple[int, float]]:
    """Train a bundle once with ``overrides`` and return its per-epoch validation ``metric``.

    A fresh :class:`monai.bundle.ConfigParser` reads ``config_files`` (later files override earlier ones), applies
    ``overrides`` (ids with ``#`` reach into nested entries), runs the config's ``initialize`` expressions, attaches
    an :class:`EpochMetricReporter` to the evaluator, and runs the config's ``run`` expressions (or the trainer),
    then ``finalize``.

    Args:
        config_files: the bundle's training config and its layers.
        overrides: config id -> value.
        callback: ``(epoch, value) -> stop``, see :class:`EpochMetricReporter`.
        metric: evaluator metric to report.
        trainer_id: config id of the trainer.
        evaluator_id: config id of the validation evaluator.

    Returns:
        ``[(epoch, value), ...]`` of the validation runs.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    parser.update(dict(overrides))
    if "initialize" in parser:
        parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content(trainer_id)
    evaluator = parser.get_parsed_content(evaluator_id)
    reporter = EpochMetricReporter(trainer, metric, callback)
    reporter.attach(evaluator)
    try:
        if "run" in parser:
            parser.get_parsed_content("run")
        else:
            trainer.run()
    finally:
        if "finalize" in parser:
            parser.get_parsed_content("finalize")
    return reporter.history


def _session_seed(seed: int | None, offset: int) -> int | None:
    """``seed`` for a new study; for a resumed one (``offset`` trials) a seed mixed from both, so that sessions
    neither replay earlier random points nor use consecutive (correlated) seeds."""
    if seed is None or offset == 0:
        return seed
    return int(np.random.SeedSequence([int(seed), int(offset)]).generate_state(1)[0] % (2**31 - 1))


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
    points of its first session. A string ``storage`` with ``heartbeat_interval``
    becomes an ``RDBStorage`` whose stale running trials (of an interrupted session) are marked failed once their
    heartbeat is older than ``2 * heartbeat_interval`` seconds.

    Args:
        storage: an Optuna storage URL (e.g. :func:`sqlite_url`) or storage object.
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
    if isinstance(storage, str) and heartbeat_interval:
        with warnings.catch_warnings():  # the heartbeat is flagged experimental (unchanged since Optuna 2.9)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                storage, heartbeat_interval=int(heartbeat_interval), grace_period=2 * int(heartbeat_interval)
            )
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


def _completed(study: Any) -> list[Any]:
    optuna = import_optuna()
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def write_best_params(study: Any, path: str | os.PathLike) -> Path | None:
    """Write the best trial's parameters as bundle config ids (:func:`params_to_config`) to a JSON file.

    The file (e.g. ``{"alpha": 1.05, "lambda_max": 2.3}``) is a config layer for the bundle's ``train.json``.
    Written atomically; nothing is written (None returned) while the study has no complete trial.
    """
    if not _completed(study):
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, params_to_config(study.best_trial.params))


def _summary(study: Any, metric: str) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    completed = _completed(study)
    best = study.best_trial if completed else None
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return {
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "metric": metric,
        "counts": counts,
        "best_trial": None if best is None else best.number,
        "best_value": None if best is None else best.value,
        "best_params": None if best is None else params_to_config(best.params),
        "trials": [
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "params": params_to_config(t.params),
                "epochs": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            }
            for t in trials
        ],
    }


class BundleTuner:
    """Optuna search over the regularisation hyperparameters of a bundle, one short training per trial.

    Each trial samples ``alpha - 1`` (Beta prior; ``1 / sigma^2`` for the Gaussian prior) and ``lambda_max``
    (TPE, seeded), trains the bundle (``config_files`` + ``overrides`` + the sampled ``alpha``/``inv_sigma2`` and
    ``lambda_max``, ``max_epochs=trial_epochs``, ``ckpt_dir``/``log_dir`` in ``output_dir/trial_NNNN/``), reports
    the validation ``metric`` of every epoch to the pruner and returns its best value. The study is stored in
    ``storage`` (default SQLite ``output_dir/study.db``) and resumed when it exists: :meth:`run` runs trials until
    the study holds ``n_trials`` complete or pruned trials. The log names each trial, its parameters, per-epoch
    values, result or pruning, and the best so far.

    Args:
        config_files: the bundle's training config files (layers in order), e.g. ``[".../configs/train.json"]``.
        output_dir: folder of the study file, the trial folders, ``best_params.json`` and ``study_summary.json``.
        study_name: name of the study in the storage.
        n_trials: total number of finished (complete or pruned) trials to reach.
        trial_epochs: training epochs per trial.
        prior: ``"beta"`` or ``"gaussian"`` (must match the bundle's ``prior``).
        alpha_minus_one_range: search range of ``alpha - 1``.
        lambda_max_range: search range of ``lambda_max``.
        inv_sigma2_range: search range of ``1 / sigma^2``.
        log_scale: sample on a log scale.
        overrides: config overrides for every trial (e.g. the data and network settings of the calling bundle).
        metric: validation metric (an evaluator metric) to optimise.
        direction: ``"maximize"`` or ``"minimize"``.
        seed: seed of the TPE sampler.
        n_startup_trials: random trials before TPE.
        pruner_startup_trials: finished trials before the median pruner prunes.
        pruner_warmup_epochs: epochs of each trial that are never pruned.
        storage: Optuna storage URL; default ``sqlite:///<output_dir>/study.db``.
        heartbeat_interval: seconds between trial heartbeats (stale-trial detection); None to disable.
        timeout: stop starting new trials after this many seconds; None for no limit.
        pruner: an Optuna pruner replacing the median pruner.
        trainer_id: config id of the trainer.
        evaluator_id: config id of the validation evaluator.

    Raises:
        FileNotFoundError: for a missing config file (named).
        ValueError: for invalid ranges or counts.
    """

    def __init__(
        self,
        config_files: Sequence[str | os.PathLike] | str,
        output_dir: str | os.PathLike,
        study_name: str = "svreg_tuning",
        n_trials: int = 20,
        trial_epochs: int = 5,
        prior: str = "beta",
        alpha_minus_one_range: Sequence[float] = (0.01, 0.2),
        lambda_max_range: Sequence[float] = (0.5, 5.0),
        inv_sigma2_range: Sequence[float] = (0.1, 10.0),
        log_scale: bool = False,
        overrides: Mapping[str, Any] | None = None,
        metric: str = "val_mean_dice",
        direction: str = "maximize",
        seed: int | None = 0,
        n_startup_trials: int = 5,
        pruner_startup_trials: int = 5,
        pruner_warmup_epochs: int = 1,
        storage: str | None = None,
        heartbeat_interval: int | None = 60,
        timeout: float | None = None,
        pruner: Any = None,
        trainer_id: str = "train#trainer",
        evaluator_id: str = "validate#evaluator",
    ) -> None:
        files = [config_files] if isinstance(config_files, (str, os.PathLike)) else list(config_files)
        if not files:
            raise ValueError("config_files must name at least one config file, got none.")
        for f in files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"config file {str(f)!r} (tune#config_files) does not exist.")
        for name, value in (("n_trials", n_trials), ("trial_epochs", trial_epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}.")
        self.config_files = [str(f) for f in files]
        self.output_dir = Path(output_dir)
        self.study_name = study_name
        self.n_trials = n_trials
        self.trial_epochs = trial_epochs
        self.space = search_space(prior, alpha_minus_one_range, lambda_max_range, inv_sigma2_range, log_scale)
        reserved = {"ckpt_dir", "log_dir", "max_epochs", "resume", "lambda_max"}
        reserved |= {cls.parameter for cls in PRIOR_REGISTRY.values()}
        self.overrides = {k: v for k, v in dict(overrides or {}).items() if k not in reserved}
        self.metric = metric
        self.direction = direction
        self.seed = seed
        self.n_startup_trials = n_startup_trials
        self.pruner_startup_trials = pruner_startup_trials
        self.pruner_warmup_epochs = pruner_warmup_epochs
        self.storage = storage
        self.heartbeat_interval = heartbeat_interval
        self.timeout = timeout
        self.pruner = pruner
        self.trainer_id = trainer_id
        self.evaluator_id = evaluator_id
        self.best_params_file = self.output_dir / "best_params.json"
        self.summary_file = self.output_dir / "study_summary.json"
        self.study: Any = None

    def trial_dir(self, number: int) -> Path:
        """Folder of trial ``number``."""
        return self.output_dir / f"trial_{number:04d}"

    def objective(self, trial: Any) -> float:
        """Train one trial and return its best validation metric (raises ``optuna.TrialPruned`` when pruned)."""
        optuna = import_optuna()
        values = params_to_config(suggest_parameters(trial, self.space))
        trial_dir = self.trial_dir(trial.number)
        trial_dir.mkdir(parents=True, exist_ok=True)
        write_json(trial_dir / "params.json", {"trial": trial.number, **values})
        overrides = {
            **self.overrides,
            **values,
            "ckpt_dir": str(trial_dir / "models"),
            "log_dir": str(trial_dir / "logs"),
            "max_epochs": self.trial_epochs,
            "resume": False,
        }
        logger.info(f"trial {trial.number} started: {_format(values)} ({self.trial_epochs} epochs, in {trial_dir})")

        pruned: list[tuple[int, float]] = []

        def report(epoch: int, value: float) -> bool:
            logger.info(f"trial {trial.number} epoch {epoch}: {self.metric} {value:.4f}")
            if math.isfinite(value):
                trial.report(value, epoch)
            if trial.should_prune():
                pruned.append((epoch, value))
                return True
            return False

        try:
            history = run_bundle_trial(
                self.config_files, overrides, report, self.metric, self.trainer_id, self.evaluator_id
            )
        finally:
            gc.collect()
        if pruned:
            epoch, value = pruned[0]
            trial.set_user_attr("pruned_epoch", epoch)
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.metric} {value:.4f})")
        finite = [(e, v) for e, v in history if math.isfinite(v)]
        if not finite:
            raise ValueError(
                f"trial {trial.number} produced no finite {self.metric} in {self.trial_epochs} epochs (values: "
                f"{history}); check that validation runs within trial_epochs (val_interval) and computes {self.metric}."
            )
        pick = max if self.direction == "maximize" else min
        best_epoch, best = pick(finite, key=lambda ev: ev[1])
        trial.set_user_attr("best_epoch", best_epoch)
        return best

    def _after_trial(self, study: Any, trial: Any) -> None:
        optuna = import_optuna()
        values = _format(params_to_config(trial.params))
        if trial.state == optuna.trial.TrialState.PRUNED:
            epoch = trial.user_attrs.get("pruned_epoch", max(trial.intermediate_values, default=0))
            value = trial.intermediate_values.get(epoch, float("nan"))
            logger.info(f"trial {trial.number} pruned at epoch {epoch} ({self.metric} {value:.4f}): {values}")
        elif trial.state == optuna.trial.TrialState.COMPLETE:
            best = study.best_trial
            logger.info(
                f"trial {trial.number} finished: best {self.metric} {trial.value:.4f} (epoch "
                f"{trial.user_attrs.get('best_epoch')}) with {values}; best so far: trial {best.number}, "
                f"{self.metric} {best.value:.4f} with {_format(params_to_config(best.params))}"
            )
        else:
            logger.warning(f"trial {trial.number} ended as {trial.state.name}: {values}")
        self._write(study)

    def _write(self, study: Any, log: bool = True) -> None:
        path = write_best_params(study, self.best_params_file)
        if path is not None and log:
            logger.info(f"best parameters so far written to {path}")
        write_json(self.summary_file, _summary(study, self.metric))

    def run(self) -> dict[str, float]:
        """Run (or resume) the study until it has ``n_trials`` finished trials.

        Returns:
            the best parameters as config ids (``{"alpha": ..., "lambda_max": ...}``), empty when no trial
            completed.
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        storage = self.storage or sqlite_url(self.output_dir / "study.db")
        self.study = study = create_study(
            storage,
            self.study_name,
            self.direction,
            self.seed,
            self.n_startup_trials,
            self.pruner,
            self.pruner_startup_trials,
            self.pruner_warmup_epochs,
            self.heartbeat_interval,
        )
        done = finished_trial_count(study)
        remaining = self.n_trials - done
        space = ", ".join(f"{p.name} in [{p.low:g}, {p.high:g}]{' (log)' if p.log else ''}" for p in self.space)
        logger.info(
            f"study {self.study_name!r} in {storage}: {done} finished trial(s) found, {max(remaining, 0)} to run "
            f"(n_trials {self.n_trials}); searching {space}, {self.direction} {self.metric}, "
            f"{self.trial_epochs} epoch(s) per trial"
        )
        if remaining > 0:
            study.optimize(self.objective, n_trials=remaining, timeout=self.timeout, callbacks=[self._after_trial])
        self._write(study, log=False)
        if not _completed(study):
            logger.warning(f"study {self.study_name!r} has no complete trial; no best parameters written.")
            return {}
        best = study.best_trial
        result = params_to_config(best.params)
        logger.info(
            f"best trial {best.number}: {self.metric} {best.value:.4f} with {_format(result)}; load it as a config "
            f"layer: {self.best_params_file}"
        )
        return result
