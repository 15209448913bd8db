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
"""Bayesian optimisation of a bundle's regularisation hyperparameters: one bundle training per Optuna trial.

Each trial is a :class:`monai.bundle.ConfigWorkflow` of the bundle's training config files with the sampled
hyperparameters as overrides; its validation metric goes to the pruner through Optuna's Ignite pruning handler
(``optuna-integration``), the study stops at ``n_trials`` finished trials through Optuna's ``MaxTrialsCallback``
(also when several workers share the study), and the trials are summarised by ``Study.trials_dataframe``. The
study lives in a storage (:func:`svreg_monai.tuning.create_storage`), so an interrupted search resumes where it
stopped and several processes or machines can search together.

Files, in ``output_dir``: ``trial_NNNN/`` per trial (``models/``, ``logs/``, ``params.json``), ``best_params.json``
(``{"alpha": ..., "lambda_max": ...}``, a config layer for the bundle's training, rewritten after every finished
trial) and ``trials.csv`` (one row per trial: state, value, parameters, per-epoch values).
"""

from __future__ import annotations

import gc
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Events
from monai.utils import OptionalImportError, optional_import

from svreg_monai.priors import PRIOR_REGISTRY
from svreg_monai.tuning.study import (
    create_study,
    finished_trial_count,
    import_optuna,
    search_space,
    sqlite_url,
    suggest_parameters,
)
from svreg_monai.utils.io import atomic_write, write_json
from svreg_monai.utils.validation import check_positive_int

__all__ = ["BundleTuner", "params_to_config", "run_bundle_trial", "write_best_params"]

logger = logging.getLogger(__name__)


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


def _pruning_handler(trial: Any, metric: str, trainer: Any) -> Any:
    """Optuna's Ignite pruning handler, ending the training with ``trainer.terminate()`` when it prunes.

    The handler reports the metric and asks the pruner (the library's logic); it signals pruning by raising
    ``optuna.TrialPruned`` inside the evaluator, which MONAI's ``StatsHandler`` would log as an error with a
    traceback at both engines. Terminating instead ends the epoch cleanly (its handlers and checkpoints run);
    the trial is then reported as pruned by :func:`run_bundle_trial`'s caller.
    """
    integration, has_integration = optional_import("optuna_integration.pytorch_ignite")
    if not has_integration:
        raise OptionalImportError(
            "pruning bundle trials needs optuna-integration, which is not installed; install it with "
            "`pip install svreg-monai[tune]` (or `pip install optuna-integration`)."
        )
    optuna = import_optuna()
    handler = integration.PyTorchIgnitePruningHandler(trial, metric, trainer)

    def prune(evaluator: Any) -> None:
        try:
            handler(evaluator)
        except optuna.TrialPruned:
            trial.set_user_attr("pruned_epoch", int(trainer.state.epoch))
            trainer.terminate()

    return prune


def run_bundle_trial(
    config_files: Sequence[str | os.PathLike],
    overrides: Mapping[str, Any],
    trial: Any = None,
    metric: str = "val_mean_dice",
) -> list[tuple[int, float]]:
    """Train a bundle once with ``overrides`` and return its per-epoch validation ``metric``.

    The training is a :class:`monai.bundle.ConfigWorkflow` (``workflow_type="train"``: its ``trainer`` and
    ``evaluator`` properties are the bundle's ``train#trainer`` and ``validate#evaluator``) of ``config_files``
    (later files override earlier ones) with ``overrides`` (ids with ``#`` reach into nested entries), run through
    its ``initialize``, ``run`` and ``finalize`` expressions.

    Args:
        config_files: the bundle's training config and its layers.
        overrides: config id -> value.
        trial: an Optuna trial; each validation result is reported to it and the training ends early when its
            pruner says so (the trial's ``pruned_epoch`` user attribute is then set).
        metric: evaluator metric to report.

    Returns:
        ``[(epoch, value), ...]`` of the validation runs.
    """
    from monai.bundle import ConfigWorkflow

    # the trial keeps the logging of the calling process (logging_file=False) without MONAI's warning about it
    monai_logger = logging.getLogger("monai.bundle.workflows")
    level = monai_logger.level
    monai_logger.setLevel(logging.ERROR)
    try:
        files = [str(f) for f in config_files]
        workflow = ConfigWorkflow(config_file=files, logging_file=False, workflow_type="train", **dict(overrides))
    finally:
        monai_logger.setLevel(level)
    workflow.initialize()
    trainer, evaluator = workflow.trainer, workflow.evaluator
    history: list[tuple[int, float]] = []

    def record(engine: Any) -> None:
        if metric not in engine.state.metrics:
            raise ValueError(f"the evaluator computed no {metric!r}; it computed {sorted(engine.state.metrics)}.")
        history.append((int(trainer.state.epoch), float(engine.state.metrics[metric])))

    evaluator.add_event_handler(Events.COMPLETED, record)
    if trial is not None:
        evaluator.add_event_handler(Events.COMPLETED, _pruning_handler(trial, metric, trainer))
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return history


def write_best_params(study: Any, path: str | os.PathLike) -> Path | None:
    """Write the best trial's parameters as bundle config ids (:func:`params_to_config`) to a JSON file.

    The file (e.g. ``{"alpha": 1.05, "lambda_max": 2.3}``) is a config layer for the bundle's ``train.json``.
    Written atomically; nothing is written (None returned) while the study has no complete trial.
    """
    optuna = import_optuna()
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, params_to_config(study.best_trial.params))


class BundleTuner:
    """Optuna search over the regularisation hyperparameters of a bundle, one short training per trial.

    Each trial samples ``alpha - 1`` (Beta prior; ``1 / sigma^2`` for the Gaussian prior) and ``lambda_max``
    (TPE, seeded), trains the bundle (``config_files`` + ``overrides`` + the sampled ``alpha``/``inv_sigma2`` and
    ``lambda_max``, ``max_epochs=trial_epochs``, ``ckpt_dir``/``log_dir`` in ``output_dir/trial_NNNN/``) with
    :func:`run_bundle_trial`, reports the validation ``metric`` of every epoch to the pruner and returns its best
    value. The study is stored in ``storage`` (default SQLite ``output_dir/study.db``) and resumed when it exists:
    :meth:`run` runs trials until the study holds ``n_trials`` complete or pruned trials, counted over every
    worker that shares the storage. The log names each trial, its parameters, per-epoch values, result or
    pruning, and the best so far.

    Args:
        config_files: the bundle's training config files (layers in order), e.g. ``[".../configs/train.json"]``.
        output_dir: folder of the study file, the trial folders, ``best_params.json`` and ``trials.csv``.
        study_name: name of the study in the storage.
        n_trials: total number of finished (complete or pruned) trials to reach.
        trial_epochs: training epochs per trial.
        prior: a registered prior name (must match the bundle's ``prior``).
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
        storage: Optuna storage, see :func:`~svreg_monai.tuning.create_storage` (a URL, a ``.db`` SQLite file or a
            journal file); default ``output_dir/study.db``.
        heartbeat_interval: seconds between trial heartbeats (stale-trial detection of RDB storages); None to
            disable.
        timeout: stop starting new trials after this many seconds; None for no limit.
        pruner: an Optuna pruner replacing the median pruner.

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
        storage: str | os.PathLike | Any = None,
        heartbeat_interval: int | None = 60,
        timeout: float | None = None,
        pruner: Any = None,
    ) -> None:
        files = [config_files] if isinstance(config_files, (str, os.PathLike)) else list(config_files)
        if not files:
            raise ValueError("config_files must name at least one config file, got none.")
        for f in files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"config file {str(f)!r} (tune#config_files) does not exist.")
        check_positive_int(n_trials, "n_trials")
        check_positive_int(trial_epochs, "trial_epochs")
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
        self.best_params_file = self.output_dir / "best_params.json"
        self.trials_file = self.output_dir / "trials.csv"
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
        try:
            history = run_bundle_trial(self.config_files, overrides, trial, self.metric)
        finally:
            gc.collect()
        for epoch, value in history:
            logger.info(f"trial {trial.number} epoch {epoch}: {self.metric} {value:.4f}")
        if "pruned_epoch" in trial.user_attrs:
            raise optuna.TrialPruned(f"pruned at epoch {trial.user_attrs['pruned_epoch']}")
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
        table = study.trials_dataframe()
        with atomic_write(self.trials_file, "w") as f:
            table.to_csv(f, index=False)

    def run(self) -> dict[str, float]:
        """Run (or resume, or join) the study until it has ``n_trials`` finished trials.

        Returns:
            the best parameters as config ids (``{"alpha": ..., "lambda_max": ...}``), empty when no trial
            completed.
        """
        optuna = import_optuna()
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
            finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            stop = optuna.study.MaxTrialsCallback(self.n_trials, states=finished)
            study.optimize(self.objective, timeout=self.timeout, callbacks=[self._after_trial, stop])
        self._write(study, log=False)
        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            logger.warning(f"study {self.study_name!r} has no complete trial; no best parameters written.")
            return {}
        best = study.best_trial
        result = params_to_config(best.params)
        logger.info(
            f"best trial {best.number}: {self.metric} {best.value:.4f} with {_format(result)}; load it as a config "
            f"layer: {self.best_params_file}"
        )
        return result
