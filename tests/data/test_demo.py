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
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, LoadImaged

from svreg_monai.data import (
    DEMO_IMAGE_SIZE,
    DEMO_LABEL_VALUES,
    CheckRegistrationPaird,
    load_registration_datalist,
    make_demo_dataset,
)
from svreg_monai.data import demo as demo_module
from svreg_monai.utils import RegistrationKeys as K

pytest.importorskip("nilearn")

PARAMS = {"num_subjects": 4, "num_val": 1, "num_test": 1, "seed": 0}
SUBJECTS = [f"sub-{k:03d}" for k in range(1, 5)]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    assert make_demo_dataset(root, **PARAMS) == root / "datalist.json"
    return root


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    return 2.0 * np.sum((a == label) & (b == label)) / (np.sum(a == label) + np.sum(b == label))


def test_files_shapes_labels_affine(demo_dir):
    for name in ["atlas", *SUBJECTS]:
        image, affine = load(demo_dir / name / "T1.nii.gz")
        labels, label_affine = load(demo_dir / name / "seg.nii.gz")
        assert image.shape == labels.shape == DEMO_IMAGE_SIZE == (80, 96, 80)
        assert image.dtype == np.float32 and labels.dtype == np.uint8
        assert set(np.unique(labels)) == {0, 1, 2, 3}
        assert image.min() >= 0.0 and image.max() <= 1.0 and image[labels == 0].mean() < 0.02
        np.testing.assert_allclose(np.diag(affine)[:3], [2.0, 2.0, 2.0])
        np.testing.assert_array_equal(affine, label_affine)
    # the atlas's grey matter is darker than its white matter (a T1-weighted image)
    atlas, _ = load(demo_dir / "atlas" / "T1.nii.gz")
    atlas_labels, _ = load(demo_dir / "atlas" / "seg.nii.gz")
    assert atlas[atlas_labels == 2].mean() < atlas[atlas_labels == 3].mean()
    for f in ("dataset.json", "README.txt", "manifest.json"):
        assert (demo_dir / f).is_file()
    assert "icbm152_2009" in (demo_dir / "README.txt").read_text()
    assert not (demo_dir / ".incomplete").exists()


def test_splits_and_loading(demo_dir):
    datalist = json.loads((demo_dir / "datalist.json").read_text())
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [2, 1, 1]
    assert datalist["test"][0]["image"] == "sub-004/T1.nii.gz"
    items = load_registration_datalist(demo_dir / "datalist.json", "validation")
    assert items[0][K.MOVING].endswith("atlas/T1.nii.gz") and items[0][K.FIXED].endswith("sub-003/T1.nii.gz")
    keys = [K.MOVING, K.FIXED, K.MOVING_LABEL, K.FIXED_LABEL]
    loaded = Compose(
        [LoadImaged(keys, ensure_channel_first=True), CheckRegistrationPaird(label_values=DEMO_LABEL_VALUES)]
    )(items[0])
    assert loaded[K.FIXED].shape == (1, 80, 96, 80)


def test_warps_are_real_but_moderate(demo_dir):
    atlas_labels, _ = load(demo_dir / "atlas" / "seg.nii.gz")
    atlas, _ = load(demo_dir / "atlas" / "T1.nii.gz")
    for name in SUBJECTS:
        labels, _ = load(demo_dir / name / "seg.nii.gz")
        image, _ = load(demo_dir / name / "T1.nii.gz")
        mean_dice = np.mean([dice(atlas_labels, labels, k) for k in DEMO_LABEL_VALUES])
        assert 0.5 < mean_dice < 0.9, (name, mean_dice)
        assert not np.array_equal(image, atlas)


def test_reproducible_and_subjects_independent_of_count(demo_dir, tmp_path):
    other = tmp_path / "again"
    make_demo_dataset(other, num_subjects=3, num_val=1, num_test=0, seed=0)
    for rel in ("atlas/T1.nii.gz", "atlas/seg.nii.gz", "sub-001/T1.nii.gz", "sub-003/seg.nii.gz", "sub-003/T1.nii.gz"):
        a, affine_a = load(demo_dir / rel)
        b, affine_b = load(other / rel)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(affine_a, affine_b)
    seeded = tmp_path / "seed1"
    make_demo_dataset(seeded, num_subjects=2, num_val=0, num_test=0, seed=1)
    assert not np.array_equal(load(seeded / "sub-001/T1.nii.gz")[0], load(demo_dir / "sub-001/T1.nii.gz")[0])


def test_idempotent_and_parameter_mismatch(demo_dir, tmp_path, monkeypatch):
    root = tmp_path / "copy"
    shutil.copytree(demo_dir, root)
    mtime = (root / "sub-001" / "T1.nii.gz").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(demo_module, "_random_subject", fail)
    assert make_demo_dataset(root, **PARAMS) == root / "datalist.json"  # reused, nothing generated
    assert (root / "sub-001" / "T1.nii.gz").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match=r"generated with \{'num_subjects': 4.*overwrite=True"):
        make_demo_dataset(root, **{**PARAMS, "seed": 3})
    monkeypatch.undo()
    # overwrite with fewer subjects: the stale subject is removed, the manifest records the new parameters
    make_demo_dataset(root, num_subjects=3, num_val=1, num_test=1, overwrite=True)
    assert not (root / "sub-004").exists()
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["params"] == {"num_subjects": 3, "num_val": 1, "num_test": 1, "seed": 0}
    assert manifest["generator_version"] == demo_module.DEMO_GENERATOR_VERSION


def test_interrupted_generation_is_redone(demo_dir, tmp_path):
    root = tmp_path / "partial"
    shutil.copytree(demo_dir, root)
    (root / "manifest.json").unlink()  # as if interrupted before the manifest was written
    (root / ".incomplete").write_text("")
    (root / "sub-002" / "seg.nii.gz").unlink()
    make_demo_dataset(root, **PARAMS)
    assert (root / "sub-002" / "seg.nii.gz").is_file() and (root / "manifest.json").is_file()
    assert not (root / ".incomplete").exists()


def test_refuses_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("my data")
    with pytest.raises(ValueError, match=re.escape(str(root)) + ".*not empty.*overwrite=True"):
        make_demo_dataset(root, **PARAMS)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"num_subjects": 2, "num_val": 1, "num_test": 1}, "leaves 0 training subjects"),
        ({"num_subjects": 0}, "num_subjects must be an integer >= 1, got 0"),
        ({"num_val": -1}, "num_val must be an integer >= 0, got -1"),
        ({"seed": 1.5}, "seed must be an integer >= 0, got 1.5"),
    ],
)
def test_invalid_parameters(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_demo_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
