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
"""Applications: the code that knows files, folders, bundles and their config ids.

The core packages import nothing from here (an import-linter layers contract in ``setup.cfg``, checked by CI):
the data source of a bundle (:func:`ensure_dataset`, :func:`load_split`), pair registration of two scans
(:func:`register_pair`), the bundle's hyper setting and grid search
(:func:`resolve_hyper_setting`, :class:`EvaluatorGridSearch`), the Optuna tuner of a bundle (:class:`BundleTuner`),
and the model-zoo tools (:mod:`svreg_monai.apps.bundle_tools`, ``python -m svreg_monai.apps.bundle_tools pack``,
imported on its own).
"""

from __future__ import annotations

from .datasets import DATASET_SOURCES, SPLIT_NAMES, ensure_dataset, load_split
from .grid_search import EvaluatorGridSearch, best_codes_layer, resolve_hyper_setting
from .pair_registration import (
    DeformableResult,
    NetworkStage,
    OptimisationStage,
    PairRegistrationResult,
    RegistrationMode,
    load_checked_image,
    load_network,
    load_state_dict,
    register_pair,
    summarize_result,
)
from .tuning import BundleTuner, params_to_config, run_bundle_trial, write_best_params

__all__ = [
    "DATASET_SOURCES",
    "SPLIT_NAMES",
    "BundleTuner",
    "DeformableResult",
    "EvaluatorGridSearch",
    "NetworkStage",
    "OptimisationStage",
    "PairRegistrationResult",
    "RegistrationMode",
    "best_codes_layer",
    "ensure_dataset",
    "load_checked_image",
    "load_network",
    "load_split",
    "load_state_dict",
    "params_to_config",
    "register_pair",
    "resolve_hyper_setting",
    "run_bundle_trial",
    "summarize_result",
    "write_best_params",
]
