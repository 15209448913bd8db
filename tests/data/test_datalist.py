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
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, LoadImaged

from svreg_monai.data import CheckRegistrationPaird, load_registration_datalist, write_registration_datalist
from svreg_monai.utils import RegistrationKeys as K

SHAPE = (8, 10, 12)
ALL_KEYS = [K.MOVING, K.FIXED, K.MOVING_LABEL, K.FIXED_LABEL]


def write_nifti(path: Path, seed: int, label: bool = False) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 4, SHAPE).astype(np.uint8) if label else rng.random(SHAPE).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)


def make_files(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        write_nifti(root / name / "T1.nii.gz", i)
        write_nifti(root / name / "seg.nii.gz", i, label=True)


def entry(name: str, label: bool = True) -> dict[str, str]:
    return {"image": f"{name}/T1.nii.gz", **({"label": f"{name}/seg.nii.gz"} if label else {})}


def pair(a: str, b: str, labels: bool = True) -> dict[str, str]:
    out = {K.MOVING: f"{a}/T1.nii.gz", K.FIXED: f"{b}/T1.nii.gz"}
    if labels:
        out.update({K.MOVING_LABEL: f"{a}/seg.nii.gz", K.FIXED_LABEL: f"{b}/seg.nii.gz"})
    return out


@pytest.fixture
def atlas_dataset(tmp_path):
    root = tmp_path / "ds"
    make_files(root, ["atlas", "sub-001", "sub-002", "sub-003"])
    datalist = {
        "atlas": entry("atlas"),
        "training": [entry("sub-001"), entry("sub-002")],
        "validation": [entry("sub-003")],
        "test": [entry("sub-003", label=False)],
    }
    return write_registration_datalist(root / "datalist.json", datalist)


def test_write_registration_datalist_roundtrip(tmp_path):
    content = {"training": [{"image": "a.nii.gz"}], "numTraining": 1}
    path = write_registration_datalist(tmp_path / "sub" / "dl.json", content)
    assert path == tmp_path / "sub" / "dl.json" and json.loads(path.read_text()) == content
    assert [p.name for p in path.parent.iterdir()] == ["dl.json"]  # no temporary file left behind
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        write_registration_datalist(tmp_path / "bad.json", {"x": object()})
    with pytest.raises(ValueError, match="mapping"):
        write_registration_datalist(tmp_path / "bad.json", [1, 2])
    assert not (tmp_path / "bad.json").exists()


@pytest.mark.parametrize("mode", ["atlas", "auto"])
def test_atlas_mode(atlas_dataset, mode):
    root = atlas_dataset.parent
    items = load_registration_datalist(atlas_dataset, "training", mode=mode)
    assert len(items) == 2
    assert items[1] == {
        K.MOVING: str(root / "atlas" / "T1.nii.gz"),
        K.MOVING_LABEL: str(root / "atlas" / "seg.nii.gz"),
        K.FIXED: str(root / "sub-002" / "T1.nii.gz"),
        K.FIXED_LABEL: str(root / "sub-002" / "seg.nii.gz"),
    }
    test_items = load_registration_datalist(atlas_dataset, "test")
    assert set(test_items[0]) == {K.MOVING, K.MOVING_LABEL, K.FIXED}  # unlabelled subjects, labelled atlas


def test_atlas_mode_loads_with_monai(atlas_dataset):
    items = load_registration_datalist(atlas_dataset, "training")
    transform = Compose([LoadImaged(keys=ALL_KEYS, ensure_channel_first=True), CheckRegistrationPaird()])
    batch = next(iter(DataLoader(Dataset(items, transform=transform), batch_size=2)))
    for key in ALL_KEYS:
        assert batch[key].shape == (2, 1, *SHAPE)
    assert batch[K.FIXED].meta["filename_or_obj"][1].endswith("sub-002/T1.nii.gz")
    assert torch.allclose(batch[K.FIXED].affine[0], torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64)))


@pytest.mark.parametrize("mode", ["pairwise", "auto"])
def test_pairwise_mode(tmp_path, mode):
    make_files(tmp_path, ["s1-a", "s1-b", "s2-a", "s2-b"])
    datalist = {"training": [pair("s1-a", "s1-b"), {**pair("s2-a", "s2-b"), "subject": "s2"}], "validation": []}
    path = write_registration_datalist(tmp_path / "pairs.json", datalist)
    items = load_registration_datalist(path, mode=mode)
    assert items[0][K.MOVING] == str(tmp_path / "s1-a" / "T1.nii.gz")
    assert items[0][K.FIXED_LABEL] == str(tmp_path / "s1-b" / "seg.nii.gz")
    assert items[1]["subject"] == "s2"  # other keys pass through
    loaded = LoadImaged(keys=ALL_KEYS, ensure_channel_first=True)(items[1])
    assert CheckRegistrationPaird()(loaded) is loaded


def test_pairwise_without_labels_and_base_dir(tmp_path):
    make_files(tmp_path / "data", ["a", "b"])
    path = write_registration_datalist(tmp_path / "lists" / "dl.json", {"training": [pair("a", "b", labels=False)]})
    items = load_registration_datalist(path, base_dir=tmp_path / "data")
    assert items == [{K.MOVING: str(tmp_path / "data/a/T1.nii.gz"), K.FIXED: str(tmp_path / "data/b/T1.nii.gz")}]
    absolute = {
        "training": [{K.MOVING: str(tmp_path / "data/a/T1.nii.gz"), K.FIXED: str(tmp_path / "data/b/T1.nii.gz")}]
    }
    path = write_registration_datalist(tmp_path / "abs.json", absolute)
    assert load_registration_datalist(path) == items


def test_atlas_without_labels(tmp_path):
    make_files(tmp_path, ["atlas", "s"])
    path = write_registration_datalist(tmp_path / "dl.json", {"atlas": "atlas/T1.nii.gz", "training": ["s/T1.nii.gz"]})
    assert load_registration_datalist(path) == [
        {K.MOVING: str(tmp_path / "atlas/T1.nii.gz"), K.FIXED: str(tmp_path / "s/T1.nii.gz")}
    ]


def _error_cases():
    atlas = entry("atlas")
    return [
        # (datalist content, key, mode, exception, pattern)
        ({"training": [entry("s1")]}, "validation", "auto", ValueError, r"key 'validation' not found.*dl\.json"),
        ({"atlas": atlas, "training": []}, "training", "auto", ValueError, r"split 'training'.*dl\.json.*non-empty"),
        ({"training": [entry("s1")]}, "training", "atlas", ValueError, r"dl\.json' has no 'atlas' entry"),
        ({"training": [entry("s1")]}, "training", "auto", ValueError, r"no 'atlas' entry"),
        (
            {"atlas": atlas, "training": [entry("s1"), entry("s2", label=False)]},
            "training",
            "auto",
            ValueError,
            r"'label' is given for some items but not for items \[1\]",
        ),
        (
            {"training": [pair("s1", "s2"), pair("s2", "s1", labels=False)]},
            "training",
            "auto",
            ValueError,
            r"'moving_label' is given for some items but not for items \[1\]",
        ),
        (
            {"atlas": atlas, "training": [pair("s1", "s2"), entry("s1")]},
            "training",
            "auto",
            ValueError,
            r"items \[1\] have no 'moving'/'fixed'",
        ),
        ({"training": [{K.MOVING: "s1/T1.nii.gz"}]}, "training", "pairwise", ValueError, "'moving' and 'fixed'"),
        ({"atlas": atlas, "training": [{"label": "x"}]}, "training", "atlas", ValueError, r"item 0 must be.*'image'"),
        (
            {"atlas": atlas, "training": [entry("s1"), entry("s9")]},
            "training",
            "auto",
            FileNotFoundError,
            r"split 'training', item 1: image file '.*s9/T1\.nii\.gz' does not exist",
        ),
        (
            {"atlas": entry("nope"), "training": [entry("s1")]},
            "training",
            "auto",
            FileNotFoundError,
            r"atlas: image file '.*nope/T1\.nii\.gz' does not exist",
        ),
        (
            {"training": [pair("s1", "s2"), {**pair("s1", "s2"), K.FIXED_LABEL: "s2/missing.nii.gz"}]},
            "training",
            "auto",
            FileNotFoundError,
            r"item 1: fixed_label file '.*s2/missing\.nii\.gz'",
        ),
        ({"training": [entry("s1")]}, "training", "both", ValueError, "mode must be one of"),
    ]


@pytest.mark.parametrize("content, key, mode, exception, pattern", _error_cases())
def test_datalist_errors(tmp_path, content, key, mode, exception, pattern):
    make_files(tmp_path, ["atlas", "s1", "s2"])
    path = write_registration_datalist(tmp_path / "dl.json", content)
    with pytest.raises(exception, match=pattern):
        load_registration_datalist(path, key, mode=mode)


def test_datalist_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none.json"))):
        load_registration_datalist(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json' is not valid JSON"):
        load_registration_datalist(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json' must hold a JSON object"):
        load_registration_datalist(tmp_path / "list.json")
