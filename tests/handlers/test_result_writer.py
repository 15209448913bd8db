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
import logging
import math
import re
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor, decollate_batch, list_data_collate
from parameterized import parameterized

from svreg_monai.handlers import RegistrationResultWriter, file_stem, pair_id_from_filenames
from svreg_monai.utils import RegistrationKeys as K

SHAPE3 = (6, 7, 8)
SHAPE2 = (9, 10)


def sample_affine(b: int, n: int) -> torch.Tensor:
    """A non-identity affine (permutation, spacing, translation) that differs between samples."""
    a = torch.eye(n + 1, dtype=torch.float64)
    a[:n, :n] = torch.diag(torch.tensor([1.5, 2.0, 2.5][:n], dtype=torch.float64)).flip(0)
    a[:n, n] = torch.tensor([10.0 + b, -5.0, 3.0][:n], dtype=torch.float64)
    return a


def make_output(shape: tuple[int, ...] = SHAPE3) -> dict:
    """Batched post-processed output of two pairs.

    Sample 0: zero ddf, warped labels identical to the fixed labels (Dice 1, NDP 0, NDV 0, SDlogJ 0).
    Sample 1: ddf u_0 = -2 x_0 (the reflection x_0 -> -x_0, det J = -1 everywhere: NDP = NDV = 100 %, SDlogJ 0),
    and warped labels whose structure 2 lost half of its voxels (Dice 2 * 4 / (4 + 8) = 2/3).
    """
    n = len(shape)
    fixed_label = torch.zeros(1, *shape, dtype=torch.long)
    fixed_label[(0, slice(0, 2), slice(0, 2)) + (slice(0, 1),) * (n - 2)] = 1  # 4 voxels
    fixed_label[(0, slice(3, 5), slice(3, 7)) + (slice(0, 1),) * (n - 2)] = 2  # 8 voxels
    items = []
    for b in range(2):
        g = torch.Generator().manual_seed(b)
        fixed = MetaTensor(
            torch.rand(1, *shape, generator=g),
            affine=sample_affine(b, n),
            meta={"filename_or_obj": f"/data/sub-00{b + 1}/T1.nii.gz"},
        )
        moving = MetaTensor(
            torch.rand(1, *shape, generator=g),
            affine=sample_affine(b + 5, n),
            meta={"filename_or_obj": f"/data/OASIS_00{b + 10}_0000.nii.gz"},
        )
        items.append({K.FIXED: fixed, K.MOVING: moving, K.FIXED_LABEL: fixed_label.clone()})
    batch = list_data_collate(items)
    grid = torch.stack(torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in shape), indexing="ij"))
    ddf = torch.zeros(2, n, *shape)
    ddf[1, 0] = -2.0 * grid[0]
    warped_label = batch[K.FIXED_LABEL].clone()
    warped_label[(1, 0, slice(3, 5), slice(5, 7))] = 0
    batch.update(
        {
            K.DDF: ddf,
            K.WEIGHT: torch.linspace(0, 1, 2 * math.prod(shape)).reshape(2, 1, *shape),
            K.WARPED: batch[K.MOVING].as_tensor() * 0.5,
            K.WARPED_LABEL: warped_label.float(),
        }
    )
    return batch


def run_engine(output, handler, epochs: int = 1) -> Engine:
    engine = Engine(lambda e, b: output)
    handler.attach(engine)
    engine.run([0], max_epochs=epochs)
    return engine


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@parameterized.expand([("3d", SHAPE3, True), ("2d", SHAPE2, False)])
def test_writes_files_with_fixed_affines_and_metrics(_, shape, save_figures):
    n = len(shape)
    output = make_output(shape)
    with tempfile.TemporaryDirectory() as d:
        out_dir = Path(d) / "results"  # created by the writer
        writer = RegistrationResultWriter(
            out_dir, label_values=[1, 2, 3], label_names=["a", "b", "c"], save_figures=save_figures
        )
        run_engine(output, writer)
        ids = ["OASIS_0010_0000_to_sub-001_T1", "OASIS_0011_0000_to_sub-002_T1"]
        expected_files = {"warped.nii.gz", "warped_label.nii.gz", "ddf.nii.gz", "weight.nii.gz", "jacobian_det.nii.gz"}
        if save_figures:
            expected_files.add("figure.png")
        assert sorted(p.name for p in out_dir.iterdir()) == sorted([*ids, "metrics.csv"])
        for b, pair in enumerate(ids):
            assert {p.name for p in (out_dir / pair).iterdir()} == expected_files
            affine = np.eye(4)
            src = output[K.FIXED].affine[b].numpy()
            affine[:n, :n], affine[:n, 3] = src[:n, :n], src[:n, n]  # a 2D affine is embedded into 3D
            for name in expected_files - {"figure.png"}:
                np.testing.assert_allclose(nib.load(str(out_dir / pair / name)).affine, affine)
            warped = nib.load(str(out_dir / pair / "warped.nii.gz"))
            assert warped.get_data_dtype() == np.float32
            np.testing.assert_allclose(np.asarray(warped.dataobj), output[K.WARPED][b, 0].numpy())
            labels = nib.load(str(out_dir / pair / "warped_label.nii.gz"))
            assert labels.get_data_dtype() == np.int16
            np.testing.assert_array_equal(np.asarray(labels.dataobj), output[K.WARPED_LABEL][b, 0].numpy())
            ddf = np.asarray(nib.load(str(out_dir / pair / "ddf.nii.gz")).dataobj)
            assert ddf.shape == (*shape, *(1,) * (3 - n), 1, n)
            np.testing.assert_allclose(np.moveaxis(ddf.reshape(*shape, n), -1, 0), output[K.DDF][b].numpy())
            det = np.asarray(nib.load(str(out_dir / pair / "jacobian_det.nii.gz")).dataobj)
            np.testing.assert_allclose(det, np.full(shape, 1.0 if b == 0 else -1.0), atol=1e-5)
            weight = np.asarray(nib.load(str(out_dir / pair / "weight.nii.gz")).dataobj)
            np.testing.assert_allclose(weight, output[K.WEIGHT][b, 0].numpy())

        rows = read_csv(out_dir / "metrics.csv")
        columns = ["pair", "moving", "fixed", "dice_a", "dice_b", "dice_c", "dice_mean", "ndp", "ndv", "sd_log_j"]
        assert list(rows[0]) == columns
        assert [r["pair"] for r in rows] == [*ids, "mean"]
        assert rows[0]["moving"] == "/data/OASIS_0010_0000.nii.gz" and rows[0]["fixed"] == "/data/sub-001/T1.nii.gz"
        expected = [
            [1.0, 1.0, math.nan, 1.0, 0.0, 0.0, 0.0],
            [1.0, 2 / 3, math.nan, 5 / 6, 100.0, 100.0, 0.0],
            [1.0, 5 / 6, math.nan, 11 / 12, 50.0, 50.0, 0.0],
        ]
        for row, exp, mem in zip(rows, expected, [*writer.rows, writer.summary]):
            values = [float(row[c]) for c in columns[3:]]
            np.testing.assert_allclose(values, exp, atol=1e-5, equal_nan=True)
            np.testing.assert_allclose([mem[c] for c in columns[3:]], exp, atol=1e-5, equal_nan=True)
        assert writer.summary["pair"] == "mean"


def test_rows_reset_between_runs_and_duplicate_ids():
    output = make_output()
    for key in (K.FIXED, K.MOVING):
        output[key].meta["filename_or_obj"] = ["/d/img01.nii.gz", "/d/img01.nii.gz"]
    with tempfile.TemporaryDirectory() as d:
        writer = RegistrationResultWriter(d, save_figures=False)
        run_engine(output, writer, epochs=2)  # one engine run of two iterations
        assert [r["pair"] for r in writer.rows] == [
            "img01_to_img01",
            "img01_to_img01_2",
            "img01_to_img01_3",
            "img01_to_img01_4",
        ]
        run_engine(output, writer)  # a new run starts a new table
        assert [r["pair"] for r in writer.rows] == ["img01_to_img01", "img01_to_img01_2"]
        rows = read_csv(Path(d) / "metrics.csv")
        assert list(rows[0]) == ["pair", "moving", "fixed", "ndp", "ndv", "sd_log_j"]  # no labels requested
        assert len(rows) == 3


def test_plain_tensors_identity_affine_and_spacing_fallback(caplog):
    output = {k: (v.as_tensor() if isinstance(v, MetaTensor) else v) for k, v in make_output().items()}
    with tempfile.TemporaryDirectory() as d, caplog.at_level(logging.WARNING):
        writer = RegistrationResultWriter(d, save_figures=False)
        run_engine(output, writer)
        assert [r["pair"] for r in writer.rows] == ["pair_0000", "pair_0001"]
        assert "identity affine" in caplog.text
        np.testing.assert_allclose(nib.load(str(Path(d) / "pair_0001" / "ddf.nii.gz")).affine, np.eye(4))
    output[f"{K.FIXED}_meta_dict"] = {"spacing": torch.tensor([[2.0, 3.0, 4.0], [1.0, 1.0, 0.5]])}
    with tempfile.TemporaryDirectory() as d:
        run_engine(output, RegistrationResultWriter(d, save_figures=False, spacing_key="spacing"))
        aff = nib.load(str(Path(d) / "pair_0001" / "warped.nii.gz")).affine
        np.testing.assert_allclose(aff, np.diag([1.0, 1.0, 0.5, 1.0]))


def test_decollated_output_and_onehot_dice():
    output = make_output()
    onehot = torch.stack([output[K.FIXED_LABEL][:, 0] == 2, output[K.FIXED_LABEL][:, 0] == 1], dim=1).float()
    output[K.FIXED_LABEL_ONEHOT] = onehot
    output[K.WARPED_LABEL_ONEHOT] = onehot.clone()
    samples = decollate_batch(output)
    with tempfile.TemporaryDirectory() as d:
        writer = RegistrationResultWriter(d, label_names=["two", "one"], save_figures=False)
        run_engine(samples, writer)
        assert [r["pair"] for r in writer.rows] == ["OASIS_0010_0000_to_sub-001_T1", "OASIS_0011_0000_to_sub-002_T1"]
        assert writer.rows[0]["dice_two"] == 1.0 and writer.rows[0]["dice_one"] == 1.0
        aff = nib.load(str(Path(d) / writer.rows[1]["pair"] / "warped.nii.gz")).affine
        np.testing.assert_allclose(aff, output[K.FIXED].affine[1].numpy())


@parameterized.expand(
    [
        ("/data/sub-001/T1.nii.gz", "sub-001_T1"),
        ("/x/imagesTr/OASIS_0001_0000.nii.gz", "OASIS_0001_0000"),
        ("/x/Test/subject_12.pkl", "subject_12"),
        ("/a/OASIS_OAS1_0001_MR1/aligned_norm.nii.gz", "OASIS_OAS1_0001_MR1_aligned_norm"),
        ("brain.mha", "brain"),
        ("/d/case 07/img.nii", "case_07_img"),
    ]
)
def test_file_stem(filename, expected):
    assert file_stem(filename) == expected


def test_pair_id_and_argument_errors(tmp_path):
    assert pair_id_from_filenames("a/m01.nii.gz", "b/f02.nii") == "m01_to_f02"
    with pytest.raises(ValueError, match=r"\['x'\]"):
        RegistrationResultWriter(tmp_path, label_values=[1, 2], label_names=["x"])
    with pytest.raises(ValueError, match="out/m.csv"):
        RegistrationResultWriter(tmp_path, csv_name="out/m.csv")


def test_identity_row_and_logged_summary(tmp_path, caplog):
    # moving labels given: an "identity" row (mean Dice before registration, Jacobian metrics of the identity, 0)
    # comes before "mean", and the summary is logged at the end
    output = make_output()
    moving_label = output[K.FIXED_LABEL].clone()
    moving_label[0, 0, 3:5, 3:7] = 0  # sample 0: structure 2 missing before registration -> Dice 0
    output[K.MOVING_LABEL] = moving_label.float()  # sample 1: identical to the fixed labels -> Dice 1
    writer = RegistrationResultWriter(tmp_path, label_values=[1, 2], label_names=["a", "b"], save_figures=False)
    with caplog.at_level(logging.INFO, logger="svreg_monai"):
        run_engine(output, writer)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["pair"] for r in rows][-2:] == ["identity", "mean"]
    identity = rows[-2]
    assert float(identity["dice_a"]) == 1.0 and float(identity["dice_b"]) == pytest.approx(0.5)
    assert float(identity["dice_mean"]) == pytest.approx(0.75)
    assert (float(identity["ndp"]), float(identity["ndv"]), float(identity["sd_log_j"])) == (0.0, 0.0, 0.0)
    assert float(rows[-1]["dice_b"]) == pytest.approx((1 + 2 / 3) / 2)  # the registered mean is unchanged
    text = caplog.text
    assert "Registration results, 2 pair(s), table" in text and "metrics.csv" in text
    assert "dice_mean" in text and "sd_log_j" in text
    assert re.search(r"identity\s+1\.0000\s+0\.5000\s+0\.7500", text)
    assert re.search(r"mean\s+1\.0000\s+0\.8333", text)
