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
from __future__ import annotations

import json
import logging
import sys

import pytest
from ignite.engine import Engine, Events

import svreg_monai.tuning.study as study_module
from svreg_monai.tuning import (
    BundleTuner,
    EpochMetricReporter,
    SearchParameter,
    create_study,
    finished_trial_count,
    import_optuna,
    params_to_config,
    search_space,
    sqlite_url,
    write_best_params,
)

OPTUNA_MISSING = "Optuna is not installed (pip install svreg-monai[tune]); the study tests need it"


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({}, [("alpha_minus_one", 0.01, 0.2, False), ("lambda_max", 0.5, 5.0, False)]),
        ({"prior": "gaussian", "log_scale": True}, [("inv_sigma2", 0.1, 10.0, True), ("lambda_max", 0.5, 5.0, True)]),
        ({"alpha_minus_one_range": [0.0, 0.1], "lambda_max_range": (1, 2)}, [("alpha_minus_one", 0.0, 0.1, False),
                                                                          ("lambda_max", 1, 2, False)]),
    ],
)  # fmt: skip
def test_search_space(kwargs, expected):
    assert [(p.name, p.low, p.high, p.log) for p in search_space(**kwargs)] == expected


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"prior": "laplace"}, "prior 'laplace' is not registered"),
        ({"lambda_max_range": (5.0, 0.5)}, r"lambda_max range must have low < high, got \(5.0, 0.5\)"),
        ({"alpha_minus_one_range": (-0.1, 0.2)}, "alpha_minus_one must be non-negative"),
        ({"alpha_minus_one_range": (0.0, 0.2), "log_scale": True}, "log-scale alpha_minus_one range needs low > 0"),
        ({"lambda_max_range": (1.0,)}, r"lambda_max_range must be \(low, high\)"),
    ],
)
def test_search_space_rejects_bad_ranges(kwargs, match):
    with pytest.raises(ValueError, match=match):
        search_space(**kwargs)


def test_params_to_config_maps_alpha_minus_one():
    assert params_to_config({"alpha_minus_one": 0.05, "lambda_max": 2.0}) == {"alpha": 1.05, "lambda_max": 2.0}
    assert params_to_config({"inv_sigma2": 3.0, "lambda_max": 1.0}) == {"inv_sigma2": 3.0, "lambda_max": 1.0}
    assert SearchParameter("lambda_max", 0.5, 5.0).log is False


def _engines(values):
    """A trainer whose epochs run an evaluator reporting ``values[epoch - 1]``."""
    trainer = Engine(lambda engine, batch: None)
    evaluator = Engine(lambda engine, batch: engine.state.metrics.update(val_mean_dice=values[trainer.state.epoch - 1]))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: evaluator.run([0]))
    return trainer, evaluator


def test_epoch_metric_reporter_reports_every_epoch_and_stops_on_request():
    trainer, evaluator = _engines([0.1, 0.2, 0.3, 0.4, 0.5])
    seen = []
    reporter = EpochMetricReporter(trainer, "val_mean_dice", lambda e, v: seen.append((e, v)) or e == 2)
    reporter.attach(evaluator)
    trainer.run([0], max_epochs=5)
    assert seen == reporter.history == [(1, 0.1), (2, 0.2)]
    assert reporter.stopped_at == 2 and trainer.state.epoch == 2

    trainer, evaluator = _engines([0.1])
    EpochMetricReporter(trainer, "val_ndv").attach(evaluator)
    with pytest.raises(ValueError, match=r"computed no 'val_ndv'; it computed \['val_mean_dice'\]"):
        trainer.run([0], max_epochs=1)


def test_import_optuna_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r"pip install svreg-monai\[tune\]"):
        import_optuna()


def test_bundle_tuner_validates_arguments(tmp_path):
    config = tmp_path / "train.json"
    config.write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        BundleTuner([config, tmp_path / "missing.json"], tmp_path)
    with pytest.raises(ValueError, match="n_trials must be a positive integer, got 0"):
        BundleTuner(config, tmp_path, n_trials=0)
    with pytest.raises(ValueError, match="direction"):
        BundleTuner(config, tmp_path, direction="up")
    tuner = BundleTuner(config, tmp_path, overrides={"embed_dim": 12, "alpha": 1.3, "ckpt_dir": "x"})
    assert tuner.overrides == {"embed_dim": 12}  # per-trial entries cannot be overridden


def test_created_study_resumes_from_sqlite_with_a_new_sampler_seed(tmp_path):
    optuna = pytest.importorskip("optuna", reason=OPTUNA_MISSING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = sqlite_url(tmp_path / "sub" / "study.db")
    assert url.startswith("sqlite:///") and (tmp_path / "sub").is_dir()

    def objective(trial):
        return trial.suggest_float("alpha_minus_one", 0.01, 0.2) + trial.suggest_float("lambda_max", 0.5, 5.0)

    first = create_study(url, "s", seed=0, heartbeat_interval=None)
    first.optimize(objective, n_trials=2)
    resumed = create_study(url, "s", seed=0, heartbeat_interval=None)
    assert finished_trial_count(resumed) == 2
    resumed.optimize(objective, n_trials=1)
    params = [t.params for t in resumed.trials]
    assert len(params) == 3 and params[2] != params[0]  # the resumed session does not replay the first points
    path = write_best_params(resumed, tmp_path / "best.json")
    best = json.loads(path.read_text())
    assert set(best) == {"alpha", "lambda_max"} and 1.01 <= best["alpha"] <= 1.2


@pytest.mark.parametrize("prune", [False, True])
def test_tuner_logs_trials_prunes_and_writes_best_params(tmp_path, monkeypatch, caplog, prune):
    optuna = pytest.importorskip("optuna", reason=OPTUNA_MISSING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = tmp_path / "train.json"
    config.write_text("{}")
    calls = []

    def fake_trial(config_files, overrides, callback, metric, trainer_id, evaluator_id):
        calls.append(overrides)
        history = []
        for epoch in (1, 2, 3):
            value = overrides["lambda_max"] / 10 + epoch / 100
            history.append((epoch, value))
            if callback(epoch, value):
                break
        return history

    monkeypatch.setattr(study_module, "run_bundle_trial", fake_trial)
    pruner = optuna.pruners.ThresholdPruner(lower=10.0) if prune else None
    tuner = BundleTuner(config, tmp_path / "tune", n_trials=2, trial_epochs=3, pruner=pruner, overrides={"x": 1})
    with caplog.at_level(logging.INFO, logger="svreg_monai.tuning.study"):
        best = tuner.run()
    assert [c["ckpt_dir"] for c in calls] == [str(tmp_path / "tune" / f"trial_000{i}" / "models") for i in (0, 1)]
    assert all(c["max_epochs"] == 3 and c["x"] == 1 and c["resume"] is False for c in calls)
    assert json.loads((tmp_path / "tune" / "trial_0001" / "params.json").read_text())["trial"] == 1
    summary = json.loads((tmp_path / "tune" / "study_summary.json").read_text())
    if prune:
        assert best == {} and summary["counts"] == {"pruned": 2} and not tuner.best_params_file.exists()
        assert "trial 1 pruned at epoch 1" in caplog.text
    else:
        trials = tuner.study.trials
        winner = max(trials, key=lambda t: t.value)
        assert best == params_to_config(winner.params) == json.loads(tuner.best_params_file.read_text())
        assert winner.value == pytest.approx(winner.params["lambda_max"] / 10 + 0.03)  # best epoch: the last
        assert summary["counts"] == {"complete": 2} and summary["best_trial"] == winner.number
        assert "trial 1 finished: best val_mean_dice" in caplog.text and "best so far: trial" in caplog.text
    assert "trial 0 started: alpha=" in caplog.text
