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

import sys

import pytest

from svreg_monai.tuning import (
    SearchParameter,
    create_storage,
    create_study,
    finished_trial_count,
    import_optuna,
    search_space,
    sqlite_url,
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


def test_search_parameter_defaults_to_a_linear_scale():
    assert SearchParameter("lambda_max", 0.5, 5.0).log is False


def test_import_optuna_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r"pip install svreg-monai\[tune\]"):
        import_optuna()


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


@pytest.mark.parametrize("name", ["study.db", "study.sqlite3", "study.log", "URL"])
def test_create_storage_from_a_url_a_database_file_or_a_journal_file(tmp_path, name):
    optuna = pytest.importorskip("optuna", reason=OPTUNA_MISSING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = sqlite_url(tmp_path / "url.db") if name == "URL" else tmp_path / "sub" / name
    storage = create_storage(target, heartbeat_interval=None)
    expected = optuna.storages.JournalStorage if name.endswith(".log") else optuna.storages.RDBStorage
    assert isinstance(storage, expected)
    study = create_study(storage, "s", seed=0)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = create_study(create_storage(target, heartbeat_interval=None), "s", seed=0)  # the same file, reopened
    assert finished_trial_count(again) == 2
    assert create_storage(storage) is storage
    with pytest.raises(ValueError, match="empty string"):
        create_storage("  ")
