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

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor

from svreg_monai.data import (
    FREESURFER_IXI_LABELS,
    IXI_IMAGE_SIZE,
    IXI_LABEL_NAMES,
    IXI_VOI_LABELS,
    IXI_VOI_NAMES,
    CheckRegistrationPaird,
    IXIDataset,
    LoadIXIPickled,
    ixi_datalist,
    load_ixi_pickle,
    remap_labels,
)
from svreg_monai.data import ixi as ixi_module

SHAPE = (8, 10, 12)


def write_pkl(path: Path, image: np.ndarray, label: np.ndarray) -> Path:
    """A pickle in exactly the reference format: ``pickle.dump((image, label), f)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump((image, label), f)
    return path


def random_pair(seed: int, shape: tuple[int, ...] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.random(shape).astype(np.float32)
    label = rng.choice(np.array(FREESURFER_IXI_LABELS), size=shape).astype(np.uint8)
    return image, label


def make_ixi(root: Path, counts: dict[str, int] | None = None) -> Path:
    counts = {"Train": 3, "Val": 2, "Test": 1} if counts is None else counts
    write_pkl(root / "atlas.pkl", *random_pair(0))
    for i, (folder, n) in enumerate(counts.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            write_pkl(root / folder / f"subject_{k}.pkl", *random_pair(100 * (i + 1) + k))
    return root


def test_label_tables():
    assert len(FREESURFER_IXI_LABELS) == len(IXI_LABEL_NAMES) == 46
    assert list(FREESURFER_IXI_LABELS) == sorted(set(FREESURFER_IXI_LABELS))
    assert len(IXI_VOI_LABELS) == len(IXI_VOI_NAMES) == 30
    assert IXI_VOI_LABELS[0] == 1 and IXI_VOI_LABELS[-1] == 36 and max(IXI_VOI_LABELS) < len(FREESURFER_IXI_LABELS)
    assert IXI_VOI_NAMES[0] == "Left-Cerebral-White-Matter" and IXI_VOI_NAMES[-1] == "Right-choroid-plexus"
    assert {"Brain-Stem", "CSF", "3rd-Ventricle", "Left-Hippocampus", "Right-Amygdala"} <= set(IXI_VOI_NAMES)
    assert "Unknown" not in IXI_VOI_NAMES and "Left-vessel" not in IXI_VOI_NAMES
    # spot checks of the FreeSurfer lookup table
    names = dict(zip(FREESURFER_IXI_LABELS, IXI_LABEL_NAMES))
    assert names[0] == "Unknown" and names[16] == "Brain-Stem" and names[24] == "CSF" and names[255] == "CC_Anterior"
    assert names[53] == "Right-Hippocampus" and names[72] == "5th-Ventricle"
    assert IXI_IMAGE_SIZE == (160, 192, 224)


@pytest.mark.parametrize(
    "raw, table, expected",
    [
        ([0, 2, 255, 41, 3], FREESURFER_IXI_LABELS, [0, 1, 45, 21, 2]),
        ([[0.0, 2.0], [255.0, 24.0]], FREESURFER_IXI_LABELS, [[0, 1], [45, 16]]),  # whole-number floats
        ([5, 1, 9, 9], (9, 1, 5), [2, 1, 0, 0]),  # unsorted table: table[i] -> i
        (np.array([True, False]), (0, 1), [1, 0]),
    ],
)
def test_remap_labels(raw, table, expected):
    out = remap_labels(np.asarray(raw), table)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, expected)


def test_remap_labels_full_table_roundtrip():
    raw = np.array(FREESURFER_IXI_LABELS * 3).reshape(2, 3, 23)
    out = remap_labels(raw, FREESURFER_IXI_LABELS)
    np.testing.assert_array_equal(np.asarray(FREESURFER_IXI_LABELS)[out], raw)


@pytest.mark.parametrize(
    "raw, table, pattern",
    [
        ([0, 2, 1, 6], FREESURFER_IXI_LABELS, r"'sub-1\.pkl'.*2 label value\(s\).*\[1, 6\]"),
        (list(range(300, 320)), FREESURFER_IXI_LABELS, r"'sub-1\.pkl'.*\[300, 301, .*309, \.\.\. \(20 in total\)\]"),
        ([0.5, 2.0], FREESURFER_IXI_LABELS, r"'sub-1\.pkl'.*non-integer.*0\.5"),
        ([np.nan, 2.0], FREESURFER_IXI_LABELS, r"'sub-1\.pkl'.*non-integer.*nan"),
        ([0, 1], (), "non-empty"),
        ([0, 1], (0, 1, 1), r"duplicate values \[1\]"),
    ],
)
def test_remap_labels_errors(raw, table, pattern):
    with pytest.raises(ValueError, match=pattern):
        remap_labels(np.asarray(raw), table, source="label map 'sub-1.pkl'")


def _nan_image(path):
    image, label = random_pair(1)
    image[1, 2, 3] = np.nan
    write_pkl(path, image, label)


def _shape_mismatch(path):
    write_pkl(path, random_pair(1)[0], random_pair(1, shape=(8, 10, 11))[1])


def _triple(path):
    with open(path, "wb") as f:
        pickle.dump((*random_pair(1), "extra"), f)


def _two_dimensional(path):
    write_pkl(path, np.zeros((8, 10), np.float32), np.zeros((8, 10), np.uint8))


def _garbage(path):
    path.write_bytes(b"this is not a pickle")


def _dict(path):
    with open(path, "wb") as f:
        pickle.dump({"image": 1}, f)


@pytest.mark.parametrize(
    "writer, pattern",
    [
        (_nan_image, r"non-finite values \(1 NaN, 0 Inf\)"),
        (_shape_mismatch, r"image shape \(8, 10, 12\) differs from label shape \(8, 10, 11\)"),
        (_triple, "tuple of length 3"),
        (_two_dimensional, r"3D \(H, W, D\) array, got shape \(8, 10\)"),
        (_garbage, "could not be unpickled"),
        (_dict, "must hold an \\(image, label\\) tuple, got dict"),
    ],
)
def test_load_ixi_pickle_errors_name_the_file(tmp_path, writer, pattern):
    path = tmp_path / "bad_subject.pkl"
    writer(path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + pattern):
        load_ixi_pickle(path)


def test_load_ixi_pickle(tmp_path):
    image, label = random_pair(3)
    image64 = image.astype(np.float64)
    path = write_pkl(tmp_path / "s.pkl", image64, label)
    out_image, out_label = load_ixi_pickle(path)
    assert out_image.dtype == np.float32 and out_image.shape == SHAPE
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        load_ixi_pickle(tmp_path / "missing.pkl")


def test_ixi_datalist(tmp_path):
    root = make_ixi(tmp_path / "IXI")
    for split, n in (("train", 3), ("val", 2), ("TEST", 1)):
        items = ixi_datalist(root, split)
        assert len(items) == n
        assert all(set(item) == {"moving", "fixed"} for item in items)
        assert all(item["moving"] == str(root / "atlas.pkl") for item in items)
        assert [item["fixed"] for item in items] == sorted(item["fixed"] for item in items)
    assert ixi_datalist(root, "val")[1]["fixed"] == str(root / "Val" / "subject_1.pkl")


def test_ixi_datalist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ixi_datalist(tmp_path / "nowhere", "train")
    root = make_ixi(tmp_path / "IXI", {"Train": 1, "Val": 0})
    with pytest.raises(ValueError, match=re.escape(str(root / "Val")) + r".*contains no \.pkl files"):
        ixi_datalist(root, "val")
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "Test"))):
        ixi_datalist(root, "test")
    with pytest.raises(ValueError, match="'validation'"):
        ixi_datalist(root, "validation")
    (root / "atlas.pkl").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "atlas.pkl"))):
        ixi_datalist(root, "train")


def test_load_ixi_pickled_item(tmp_path):
    root = make_ixi(tmp_path / "IXI")
    item = ixi_datalist(root, "train")[0]
    out = LoadIXIPickled()(item)
    assert set(out) == {"moving", "fixed", "moving_label", "fixed_label"}
    for key, source in (("moving", item["moving"]), ("fixed", item["fixed"])):
        image, label = out[key], out[f"{key}_label"]
        assert isinstance(image, MetaTensor) and isinstance(label, MetaTensor)
        assert image.shape == (1, *SHAPE) and image.dtype == torch.float32
        assert label.shape == (1, *SHAPE) and label.dtype == torch.int16
        assert image.meta["filename_or_obj"] == source == label.meta["filename_or_obj"]
        assert torch.equal(image.affine, torch.eye(4, dtype=torch.float64))
        raw_image, raw_label = load_ixi_pickle(source)
        np.testing.assert_array_equal(image[0].numpy(), raw_image)
        np.testing.assert_array_equal(np.asarray(FREESURFER_IXI_LABELS)[label[0].numpy()], raw_label)
    raw = LoadIXIPickled(remap=False, label_keys=("moving_seg", None))(item)
    assert set(raw) == {"moving", "fixed", "moving_seg"}
    assert set(np.unique(raw["moving_seg"].numpy())) <= set(FREESURFER_IXI_LABELS)
    with pytest.raises(ValueError, match="one entry per key"):
        LoadIXIPickled(label_keys=("moving_label",))


def test_load_ixi_pickled_unexpected_label_names_file(tmp_path):
    root = make_ixi(tmp_path / "IXI", {"Train": 1})
    image, label = random_pair(7)
    label[0, 0, 0] = 6  # not a label of the IXI table
    write_pkl(root / "Train" / "subject_0.pkl", image, label)
    item = ixi_datalist(root, "train")[0]
    with pytest.raises(ValueError, match=r"subject_0\.pkl.*\[6\]"):
        LoadIXIPickled()(item)


def test_load_ixi_pickled_caches_the_atlas(tmp_path, monkeypatch):
    root = make_ixi(tmp_path / "IXI", {"Train": 3})
    calls: list[str] = []
    original = ixi_module.load_ixi_pickle

    def counting(path):
        calls.append(os.path.basename(path))
        return original(path)

    monkeypatch.setattr(ixi_module, "load_ixi_pickle", counting)
    loader = LoadIXIPickled()
    outputs = [loader(item) for item in ixi_datalist(root, "train")]
    assert calls.count("atlas.pkl") == 1 and len(calls) == 4
    outputs[0]["moving"].fill_(-1.0)  # in-place changes downstream must not reach the cache
    assert float(loader(ixi_datalist(root, "train")[1])["moving"].min()) >= 0.0
    # a rewritten atlas (new modification time) is reloaded
    image, label = random_pair(42)
    write_pkl(root / "atlas.pkl", image, label)
    stat = os.stat(root / "atlas.pkl")
    os.utime(root / "atlas.pkl", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    out = loader(ixi_datalist(root, "train")[0])
    assert calls.count("atlas.pkl") == 2
    np.testing.assert_array_equal(out["moving"][0].numpy(), image)


def test_ixi_dataset_with_dataloader(tmp_path):
    root = make_ixi(tmp_path / "IXI")
    dataset = IXIDataset(root, "train", transform=CheckRegistrationPaird(label_values=range(46)))
    assert len(dataset) == 3
    batch = next(iter(DataLoader(dataset, batch_size=2, num_workers=0)))
    assert set(batch) == {"moving", "fixed", "moving_label", "fixed_label"}
    for key in batch:
        assert batch[key].shape == (2, 1, *SHAPE)
    assert batch["fixed"].dtype == torch.float32 and batch["fixed_label"].dtype == torch.int16
    assert int(batch["fixed_label"].max()) < 46
    assert batch["fixed"].meta["filename_or_obj"] == [str(root / "Train" / f"subject_{k}.pkl") for k in (0, 1)]
    assert batch["moving"].meta["filename_or_obj"] == [str(root / "atlas.pkl")] * 2


def test_ixi_dataset_user_transforms(tmp_path):
    root = make_ixi(tmp_path / "IXI", {"Val": 2})

    def add_one(d):
        return {**d, "fixed": d["fixed"] + 1.0}

    def flag(d):
        return {**d, "flag": 1}

    item = IXIDataset(root, "val", transform=[add_one, flag])[0]
    assert item["flag"] == 1 and float(item["fixed"].min()) >= 1.0
    assert IXIDataset(root, "val", remap=False)[0]["fixed_label"].dtype == torch.uint8
