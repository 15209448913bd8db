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
"""Ignite/MONAI event handlers: resuming, loss-term logging, skipping non-finite gradient steps, TensorBoard images
and the per-pair result writer."""

from __future__ import annotations

from svreg_monai.utils.io import file_stem, pair_id_from_filenames

from .checkpoint import TrainingCheckpoint, latest_checkpoint
from .loss_terms import LossTermsHandler
from .nonfinite import SkipNonFiniteGradients
from .result_writer import RegistrationResultWriter
from .tensorboard_images import RegistrationTensorBoardImageHandler

__all__ = [
    "LossTermsHandler",
    "TrainingCheckpoint",
    "RegistrationResultWriter",
    "RegistrationTensorBoardImageHandler",
    "SkipNonFiniteGradients",
    "file_stem",
    "latest_checkpoint",
    "pair_id_from_filenames",
]
