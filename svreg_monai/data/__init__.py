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
"""Data: the IXI reference format, JSON datalists of NIfTI/MHA files, item checks and the offline demo data set."""

from __future__ import annotations

from .checks import CheckRegistrationPaird
from .datalist import DATALIST_MODES, load_registration_datalist, write_registration_datalist
from .demo import (
    DATASET_SOURCES,
    DEMO_GENERATOR_VERSION,
    DEMO_IMAGE_SIZE,
    DEMO_LABEL_NAMES,
    DEMO_LABEL_VALUES,
    DEMO_SPACING_MM,
    ensure_dataset,
    make_demo_dataset,
)
from .ixi import (
    FREESURFER_IXI_LABELS,
    IXI_IMAGE_SIZE,
    IXI_LABEL_NAMES,
    IXI_SPLITS,
    IXI_VOI_LABELS,
    IXI_VOI_NAMES,
    IXIDataset,
    LoadIXIPickled,
    ixi_datalist,
    load_ixi_pickle,
    remap_labels,
)
from .splits import SPLIT_NAMES, load_split

__all__ = [
    "DATALIST_MODES",
    "DATASET_SOURCES",
    "DEMO_GENERATOR_VERSION",
    "DEMO_IMAGE_SIZE",
    "DEMO_LABEL_NAMES",
    "DEMO_LABEL_VALUES",
    "DEMO_SPACING_MM",
    "FREESURFER_IXI_LABELS",
    "IXI_IMAGE_SIZE",
    "IXI_LABEL_NAMES",
    "IXI_SPLITS",
    "IXI_VOI_LABELS",
    "IXI_VOI_NAMES",
    "SPLIT_NAMES",
    "CheckRegistrationPaird",
    "IXIDataset",
    "LoadIXIPickled",
    "ensure_dataset",
    "ixi_datalist",
    "load_ixi_pickle",
    "load_registration_datalist",
    "load_split",
    "make_demo_dataset",
    "remap_labels",
    "write_registration_datalist",
]
