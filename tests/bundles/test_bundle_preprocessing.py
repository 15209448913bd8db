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
"""The bundle's preprocessing chains name bad input files before anything else touches them."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from bundle_testing import BUNDLE
from monai.bundle import ConfigParser


def _parser(config: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / f"{config}.json"))
    parser["bundle_root"] = str(BUNDLE)
    return parser


def _nifti(path, data):
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return str(path)


@pytest.mark.parametrize("config, key", [("train", "preprocessing"), ("inference", "preprocessing")])
def test_nan_voxel_is_counted_before_intensity_scaling(tmp_path, config, key):
    image = np.random.default_rng(0).random((32, 32, 32))
    bad = image.copy()
    bad[3, 4, 5] = np.nan
    item = {"moving": _nifti(tmp_path / "atlas.nii.gz", image), "fixed": _nifti(tmp_path / "sub.nii.gz", bad)}
    preprocessing = _parser(config).get_parsed_content(key)
    with pytest.raises(RuntimeError) as info:
        preprocessing(item)
    message = str(info.value.__cause__ or info.value)
    assert "fixed image 'sub.nii.gz'" in message or "sub.nii.gz" in message
    assert "(1 NaN, 0 Inf)" in message


def test_4d_image_is_named(tmp_path):
    image = np.random.default_rng(0).random((32, 32, 32))
    item = {
        "moving": _nifti(tmp_path / "atlas.nii.gz", image),
        "fixed": _nifti(tmp_path / "two_volumes.nii.gz", np.stack([image, image], -1)),
    }
    preprocessing = _parser("train").get_parsed_content("preprocessing")
    with pytest.raises(RuntimeError) as info:
        preprocessing(item)
    message = str(info.value.__cause__ or info.value)
    assert "two_volumes.nii.gz" in message and "4D image of 2 volumes" in message


@pytest.mark.parametrize("config", ["train", "inference"])
def test_one_bright_voxel_does_not_squash_the_contrast(tmp_path, config):
    """Percentile scaling (as the pair registration): an outlier at twice the maximum changes no other voxel."""
    image = np.random.default_rng(0).random((32, 32, 32))
    spiked = image.copy()
    spiked[3, 4, 5] = 2.0 * image.max()
    preprocessing = _parser(config).get_parsed_content("preprocessing")
    clean = preprocessing(
        {"moving": _nifti(tmp_path / "a.nii.gz", image), "fixed": _nifti(tmp_path / "b.nii.gz", image)}
    )
    spike = preprocessing(
        {"moving": _nifti(tmp_path / "c.nii.gz", spiked), "fixed": _nifti(tmp_path / "b.nii.gz", image)}
    )
    others = np.ones(image.shape, dtype=bool)
    others[3, 4, 5] = False
    diff = (spike["moving"][0] - clean["moving"][0]).abs().numpy()[others]
    assert diff.max() < 1e-3
    assert float(spike["moving"].max()) == 1.0 and float(spike["moving"][0, 3, 4, 5]) == 1.0


@pytest.mark.parametrize("config", ["train", "inference"])
def test_num_threads_option(config):
    import torch

    before = torch.get_num_threads()
    try:
        parser = _parser(config)
        parser["num_threads"] = 1
        parser["initialize"] = [x for x in parser["initialize"] if "num_threads" in x]
        parser.get_parsed_content("initialize")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
