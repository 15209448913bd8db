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
"""Data: the IXI reference format, JSON datalists of NIfTI/MHA files, item checks, the offline demo data set and
the on-the-fly pair generator (SynthMorph recipe) over anatomies read from package archives."""

from __future__ import annotations

from .anatomy import REGISTRY_ANATOMY, aseg_tissue, kmeans_labels, load_registry_anatomy, mni_grid, read_archive_member
from .checks import CheckRegistrationPaird
from .datalist import DATALIST_MODES, load_registration_datalist, write_registration_datalist
from .demo import (
    DEMO_GENERATOR_VERSION,
    DEMO_IMAGE_SIZE,
    DEMO_LABEL_NAMES,
    DEMO_LABEL_VALUES,
    DEMO_SPACING_MM,
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
from .synth import (
    AnatomySource,
    SynthRegistrationDataset,
    corrupt_intensity,
    random_affine_ddf,
    random_deformation,
    random_velocity,
    synthesize_image,
)

__all__ = [
    "DATALIST_MODES",
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
    "REGISTRY_ANATOMY",
    "AnatomySource",
    "SynthRegistrationDataset",
    "aseg_tissue",
    "corrupt_intensity",
    "kmeans_labels",
    "load_registry_anatomy",
    "mni_grid",
    "random_affine_ddf",
    "random_deformation",
    "random_velocity",
    "read_archive_member",
    "synthesize_image",
    "CheckRegistrationPaird",
    "IXIDataset",
    "LoadIXIPickled",
    "ixi_datalist",
    "load_ixi_pickle",
    "load_registration_datalist",
    "make_demo_dataset",
    "remap_labels",
    "write_registration_datalist",
]
