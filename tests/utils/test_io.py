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

import csv
import math
import os
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import pytest
import torch
from parameterized import parameterized

from svreg_monai.utils import atomic_path, atomic_write, save_nifti, write_csv, write_json


def _affine3d() -> np.ndarray:
    a = np.array([[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -5.0], [0.0, 0.0, 2.5, 3.0], [0.0, 0.0, 0.0, 1.0]])
    return a


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_atomic_write_writes_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_write(target) as f:
        f.write(b"abc")
        assert not target.exists()  # nothing visible before the block ends
    assert target.read_bytes() == b"abc"
    assert _listing(tmp_path) == ["out.bin"]


@parameterized.expand([("new_file", False), ("existing_file", True)])
def test_atomic_write_failure_keeps_previous_state(_, existing):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        target = Path(d) / "table.csv"
        if existing:
            target.write_text("old")
        with pytest.raises(RuntimeError, match="boom"), atomic_write(target, "w") as f:
            f.write("partial new content")
            raise RuntimeError("boom")
        assert _listing(Path(d)) == (["table.csv"] if existing else [])
        if existing:
            assert target.read_text() == "old"


def test_atomic_write_cleans_up_on_keyboard_interrupt(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_write(target, "w") as f:
        f.write("new")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert _listing(tmp_path) == ["x.txt"]


@parameterized.expand([("img.nii.gz", ".nii.gz"), ("table.csv", ".csv"), ("a.b.png", ".png"), ("noext", "")])
def test_atomic_path_keeps_suffix(name, suffix):
    import tempfile

    with tempfile.TemporaryDirectory() as d, atomic_path(Path(d) / name) as tmp:
        assert tmp.parent == Path(d)
        assert tmp.name.startswith(f".{name}.tmp-{os.getpid()}-")
        assert tmp.name.endswith(suffix)
        tmp.write_bytes(b"1")


def test_atomic_write_errors(tmp_path):
    with pytest.raises(ValueError, match="'a'"), atomic_write(tmp_path / "x", mode="a"):
        pass
    with pytest.raises(FileNotFoundError, match="missing"), atomic_write(tmp_path / "missing" / "x"):
        pass
    with pytest.raises(ValueError, match="directory"), atomic_write(tmp_path):
        pass
    assert _listing(tmp_path) == []


@parameterized.expand(
    [
        ("float32_numpy", np.float32, False, None),
        ("int16_torch", np.int16, True, np.int16),
        ("float64_as_float32", np.float64, True, np.float32),
    ]
)
def test_save_nifti_scalar_round_trip(_, dtype, as_torch, save_dtype):
    import tempfile

    data = (np.arange(4 * 5 * 6).reshape(1, 4, 5, 6) % 7).astype(dtype)
    array = torch.from_numpy(data) if as_torch else data
    with tempfile.TemporaryDirectory() as d:
        path = save_nifti(array, _affine3d(), Path(d) / "img.nii.gz", dtype=save_dtype)
        assert _listing(Path(d)) == ["img.nii.gz"]
        with open(path, "rb") as f:
            assert f.read(2) == b"\x1f\x8b"  # gzip-compressed
        img = nib.load(str(path))
        np.testing.assert_allclose(img.affine, _affine3d())
        assert img.shape == (4, 5, 6)
        assert img.get_data_dtype() == np.dtype(save_dtype or dtype)
        np.testing.assert_array_equal(np.asarray(img.dataobj), data[0])
        np.testing.assert_allclose(img.header.get_zooms(), (2.0, 1.5, 2.5))


def test_save_nifti_vector_field_layout(tmp_path):
    ddf = torch.randn(3, 4, 5, 6)
    save_nifti(ddf, torch.from_numpy(_affine3d()), tmp_path / "ddf.nii.gz")
    img = nib.load(str(tmp_path / "ddf.nii.gz"))
    assert img.shape == (4, 5, 6, 1, 3)
    assert img.header.get_intent()[0] == "vector"
    np.testing.assert_allclose(img.affine, _affine3d())
    back = np.moveaxis(np.asarray(img.dataobj)[..., 0, :], -1, 0)
    np.testing.assert_array_equal(back, ddf.numpy())


def test_save_nifti_multichannel_image_has_no_intent(tmp_path):
    save_nifti(np.ones((2, 3, 4, 5), np.float32), None, tmp_path / "img.nii.gz", vector=False)
    img = nib.load(str(tmp_path / "img.nii.gz"))
    assert img.shape == (3, 4, 5, 1, 2)
    assert img.header.get_intent()[0] == "none"


def test_save_nifti_2d(tmp_path):
    affine2d = np.array([[0.5, 0.0, 3.0], [0.0, 2.0, -1.0], [0.0, 0.0, 1.0]])
    expected = np.array([[0.5, 0, 0, 3.0], [0, 2.0, 0, -1.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    save_nifti(np.ones((1, 4, 5), np.float32), affine2d, tmp_path / "img.nii")
    img = nib.load(str(tmp_path / "img.nii"))
    assert img.shape == (4, 5)
    np.testing.assert_allclose(img.affine, expected)
    field = np.random.default_rng(0).normal(size=(2, 4, 5)).astype(np.float32)
    save_nifti(field, affine2d, tmp_path / "ddf.nii.gz")
    img = nib.load(str(tmp_path / "ddf.nii.gz"))
    assert img.shape == (4, 5, 1, 1, 2)
    np.testing.assert_array_equal(np.moveaxis(np.asarray(img.dataobj)[:, :, 0, 0, :], -1, 0), field)


def test_save_nifti_failure_keeps_old_file(tmp_path):
    target = tmp_path / "img.nii.gz"
    save_nifti(np.zeros((1, 3, 3, 3), np.float32), None, target)
    before = target.read_bytes()

    def failing_save(image, filename):
        Path(filename).write_bytes(b"truncated")
        raise OSError("disk full")

    with mock.patch("nibabel.save", side_effect=failing_save), pytest.raises(OSError, match="disk full"):
        save_nifti(np.ones((1, 3, 3, 3), np.float32), None, target)
    assert target.read_bytes() == before
    assert _listing(tmp_path) == ["img.nii.gz"]


def test_save_nifti_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        save_nifti(np.zeros((4, 5)), None, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        save_nifti(np.zeros((1, 4, 5, 6)), np.eye(3), tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="a.png"):
        save_nifti(np.zeros((1, 4, 5, 6)), None, tmp_path / "a.png")
    with pytest.raises(TypeError, match="list"):
        save_nifti([[[0.0]]], None, tmp_path / "a.nii.gz")
    assert _listing(tmp_path) == []


def test_write_csv_round_trip(tmp_path):
    rows = [
        {"pair": "a_to_b", "dice": 0.1 + 0.2, "ndp": float("nan")},
        {"pair": "c_to_d", "dice": np.float32(0.5), "ndp": torch.tensor(2.0)},
    ]
    write_csv(tmp_path / "m.csv", rows, ["pair", "dice", "ndp", "extra"])
    with open(tmp_path / "m.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == ["pair", "dice", "ndp", "extra"]
    assert float(back[0]["dice"]) == 0.1 + 0.2  # repr precision
    assert math.isnan(float(back[0]["ndp"]))
    assert back[0]["extra"] == ""
    assert float(back[1]["dice"]) == 0.5 and float(back[1]["ndp"]) == 2.0
    write_csv(tmp_path / "k.csv", [{"x": 1}, {"y": 2}])
    assert (tmp_path / "k.csv").read_text().splitlines()[0] == "x,y"


def test_write_csv_errors_and_atomicity(tmp_path):
    target = tmp_path / "m.csv"
    target.write_text("old")
    with pytest.raises(ValueError, match="'b'"):
        write_csv(target, [{"a": 1, "b": 2}], ["a"])
    with mock.patch("csv.DictWriter.writerow", side_effect=OSError("disk full")), pytest.raises(OSError):
        write_csv(target, [{"a": 1}], ["a"])
    assert target.read_text() == "old"
    assert _listing(tmp_path) == ["m.csv"]


def test_write_json_converts_tensors_numpy_paths_and_nan(tmp_path):
    import json

    path = write_json(
        tmp_path / "doc.json",
        {"t": torch.tensor([1.0, 2.0]), "s": torch.tensor(3), "a": np.arange(2), "n": np.float32(0.5),
         "p": tmp_path / "x", "nan": float("nan"), "nested": {"inf": [math.inf, 1]}},
    )  # fmt: skip
    assert json.loads(path.read_text()) == {
        "t": [1.0, 2.0], "s": 3, "a": [0, 1], "n": 0.5, "p": str(tmp_path / "x"), "nan": None,
        "nested": {"inf": [None, 1]},
    }  # fmt: skip
    assert _listing(tmp_path) == ["doc.json"]
    with pytest.raises(ValueError, match="mapping"):
        write_json(tmp_path / "bad.json", [1, 2])
