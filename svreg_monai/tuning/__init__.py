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
"""Setting the global regularisation hyperparameters: grid search over the codes of a hyper-conditioned network,
and the search space and study of the Bayesian optimisation (Optuna, optional dependency). The bundle's grid search
and tuner, which train or evaluate bundles, are in :mod:`svreg_monai.apps`."""

from __future__ import annotations

from .grid import (
    DEFAULT_GRID_METRICS,
    GridSearchResult,
    code_grid,
    evaluator_objective,
    grid_search,
    hyper_grid_outputs,
    save_grid_search,
)
from .study import (
    SearchParameter,
    create_storage,
    create_study,
    finished_trial_count,
    import_optuna,
    search_space,
    sqlite_url,
    suggest_parameters,
)

__all__ = [
    "DEFAULT_GRID_METRICS",
    "GridSearchResult",
    "SearchParameter",
    "code_grid",
    "create_storage",
    "create_study",
    "evaluator_objective",
    "finished_trial_count",
    "grid_search",
    "hyper_grid_outputs",
    "import_optuna",
    "save_grid_search",
    "search_space",
    "sqlite_url",
    "suggest_parameters",
]
