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
"""The bundle tuner: trials, pruning through Optuna's Ignite handler, the trial count over several workers."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import textwrap

import pytest
from ignite.engine import Engine, Events

import svreg_monai.apps.tuning as tuning_module
from svreg_monai.apps import BundleTuner, params_to_config, write_best_params
from svreg_monai.tuning import create_storage, create_study, sqlite_url

OPTUNA_MISSING = "Optuna is not installed (pip install svreg-monai[tune]); the tuner tests need it"


def test_params_to_config_maps_alpha_minus_one():
    assert params_to_config({"alpha_minus_one": 0.05, "lambda_max": 2.0}) == {"alpha": 1.05, "lambda_max": 2.0}
    assert params_to_config({"inv_sigma2": 3.0, "lambda_max": 1.0}) == {"inv_sigma2": 3.0, "lambda_max": 1.0}


def test_bundle_tuner_validates_arguments(tmp_path):
    config = tmp_path / "train.json"
    config.write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        BundleTuner([config, tmp_path / "missing.json"], tmp_path)
    with pytest.raises(ValueError, match="n_trials must be a positive integer, got 0"):
        BundleTuner(config, tmp_path, n_trials=0)
    with pytest.raises(ValueError, match="trial_epochs must be a positive integer, got True"):
        BundleTuner(config, tmp_path, trial_epochs=True)
    with pytest.raises(ValueError, match="direction"):
        BundleTuner(config, tmp_path, direction="up")
    tuner = BundleTuner(config, tmp_path, overrides={"embed_dim": 12, "alpha": 1.3, "ckpt_dir": "x"})
    assert tuner.overrides == {"embed_dim": 12}  # per-trial entries cannot be overridden


def _engines(values):
    """A trainer whose epochs run an evaluator reporting ``values[epoch - 1]``."""
    trainer = Engine(lambda engine, batch: None)
    evaluator = Engine(lambda engine, batch: engine.state.metrics.update(val_mean_dice=values[trainer.state.epoch - 1]))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: evaluator.run([0]))
    return trainer, evaluator


@pytest.mark.parametrize("lower,stopped", [(0.0, None), (0.25, 2)])
def test_pruning_handler_reports_each_epoch_and_terminates_cleanly(lower, stopped):
    optuna = pytest.importorskip("optuna", reason=OPTUNA_MISSING)
    pytest.importorskip("optuna_integration", reason="optuna-integration is not installed")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the threshold pruner prunes at the first value below `lower` from epoch 2 on
    pruner = optuna.pruners.ThresholdPruner(lower=lower, n_warmup_steps=2)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    trial = study.ask()
    trainer, evaluator = _engines([0.1, 0.2, 0.3, 0.4])
    evaluator.add_event_handler(Events.COMPLETED, tuning_module._pruning_handler(trial, "val_mean_dice", trainer))
    trainer.run([0], max_epochs=4)  # no exception escapes the engines
    expected = {epoch: epoch / 10 for epoch in range(1, (stopped or 4) + 1)}
    assert study.trials[0].intermediate_values == pytest.approx(expected)
    assert trial.user_attrs.get("pruned_epoch") == stopped
    assert trainer.state.epoch == (stopped or 4)


@pytest.mark.parametrize("prune", [False, True])
def test_tuner_logs_trials_prunes_and_writes_best_params(tmp_path, monkeypatch, caplog, prune):
    optuna = pytest.importorskip("optuna", reason=OPTUNA_MISSING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = tmp_path / "train.json"
    config.write_text("{}")
    calls = []

    def fake_trial(config_files, overrides, trial, metric):
        calls.append(overrides)
        history = []
        for epoch in (1, 2, 3):
            value = overrides["lambda_max"] / 10 + epoch / 100
            history.append((epoch, value))
            trial.report(value, epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_epoch", epoch)
                break
        return history

    monkeypatch.setattr(tuning_module, "run_bundle_trial", fake_trial)
    pruner = optuna.pruners.ThresholdPruner(lower=10.0) if prune else None
    tuner = BundleTuner(config, tmp_path / "tune", n_trials=2, trial_epochs=3, pruner=pruner, overrides={"x": 1})
    with caplog.at_level(logging.INFO, logger="svreg_monai.apps.tuning"):
        best = tuner.run()
    assert [c["ckpt_dir"] for c in calls] == [str(tmp_path / "tune" / f"trial_000{i}" / "models") for i in (0, 1)]
    assert all(c["max_epochs"] == 3 and c["x"] == 1 and c["resume"] is False for c in calls)
    assert json.loads((tmp_path / "tune" / "trial_0001" / "params.json").read_text())["trial"] == 1
    with open(tuner.trials_file, newline="") as f:
        rows = list(csv.DictReader(f))  # Optuna's trials_dataframe
    assert [r["state"] for r in rows] == (["PRUNED"] * 2 if prune else ["COMPLETE"] * 2)
    assert {"number", "value", "params_alpha_minus_one", "params_lambda_max"} <= set(rows[0])
    if prune:
        assert best == {} and not tuner.best_params_file.exists()
        assert "trial 1 pruned at epoch 1" in caplog.text
    else:
        trials = tuner.study.trials
        winner = max(trials, key=lambda t: t.value)
        assert best == params_to_config(winner.params) == json.loads(tuner.best_params_file.read_text())
        assert winner.value == pytest.approx(winner.params["lambda_max"] / 10 + 0.03)  # best epoch: the last
        assert "trial 1 finished: best val_mean_dice" in caplog.text and "best so far: trial" in caplog.text
    assert "trial 0 started: alpha=" in caplog.text


def test_write_best_params_after_resuming(tmp_path):
    optuna = pytest.importorskip("optuna", reason=OPTUNA_MISSING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create_study(sqlite_url(tmp_path / "study.db"), "s", seed=0, heartbeat_interval=None)
    assert write_best_params(study, tmp_path / "best.json") is None  # no complete trial yet
    study.optimize(lambda t: t.suggest_float("alpha_minus_one", 0.01, 0.2) + t.suggest_float("lambda_max", 0, 1), 2)
    best = json.loads(write_best_params(study, tmp_path / "best.json").read_text())
    assert set(best) == {"alpha", "lambda_max"} and 1.01 <= best["alpha"] <= 1.2


_WORKER = """
import sys, time
import svreg_monai.apps.tuning as tuning
from svreg_monai.apps import BundleTuner

def fake_trial(config_files, overrides, trial, metric):
    trial.set_user_attr("worker", sys.argv[3])
    time.sleep(0.3)  # long enough for the other worker to take trials too
    return [(1, overrides["lambda_max"])]

tuning.run_bundle_trial = fake_trial
BundleTuner(sys.argv[1], sys.argv[2], study_name="shared", n_trials=6, trial_epochs=1, storage=sys.argv[4],
            heartbeat_interval=None).run()
"""


@pytest.mark.parametrize("storage", ["study.log", "study.db"])
def test_two_worker_processes_share_one_study(tmp_path, storage):
    optuna = pytest.importorskip("optuna", reason=OPTUNA_MISSING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = tmp_path / "train.json"
    config.write_text("{}")
    out, path = tmp_path / "tune", str(tmp_path / storage)
    create_study(create_storage(path, None), "shared")  # created once, before the workers start
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(_WORKER))
    workers = [
        subprocess.Popen([sys.executable, str(script), str(config), str(out), name, path], stderr=subprocess.PIPE)
        for name in ("a", "b")
    ]
    errors = [w.communicate(timeout=300)[1].decode() for w in workers]
    assert all(w.returncode == 0 for w in workers), errors
    study = create_study(create_storage(path, None), "shared")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # MaxTrialsCallback stops each worker once 6 trials are finished; a trial running in the other worker then
    # still finishes, so at most one more
    assert 6 <= len(done) <= 7 and len(study.trials) == len(done)
    assert {t.user_attrs["worker"] for t in done} == {"a", "b"}
    assert len({t.number for t in done}) == len(done) and (out / "best_params.json").is_file()
