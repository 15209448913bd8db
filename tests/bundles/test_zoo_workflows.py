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
"""Model-zoo style workflow tests: train, evaluate and infer through ``monai.bundle.ConfigWorkflow`` on synthetic
NIfTI volumes given by a JSON datalist (images smaller than ``image_size``, so the inferer pads and crops)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brain_mri_svreg"
SHAPE = (48, 56, 40)  # padded to image_size 64^3 by RegistrationInferer and cropped back
AFFINE = np.array([[1.5, 0, 0, -30.0], [0, 1.2, 0, -20.0], [0, 0, 2.0, 10.0], [0, 0, 0, 1]])
pytest.importorskip("tensorboard", reason="train.json logs to TensorBoard (pip install svreg-monai[bundle])")


def synthetic_subject(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two nested ellipsoids (labels 1 and 2) with a random shift and size, smoothed intensities and noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in SHAPE], indexing="ij"))
    centre = np.array(SHAPE) / 2 + rng.uniform(-3, 3, 3)
    radii = np.array(SHAPE) * rng.uniform(0.3, 0.38, 3)
    r = np.sqrt((((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    label = np.where(r < 0.55, 2, np.where(r < 1.0, 1, 0)).astype(np.int16)
    image = 0.45 * (r < 1.0) + 0.5 * np.clip(1.4 - 2 * r, 0, 1) + rng.normal(0, 0.02, SHAPE)
    return image.astype(np.float32), label


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A copy of the bundle without weights and a datalist data set: atlas, 3 training, 1 validation, 1 test."""
    tmp = tmp_path_factory.mktemp("zoo")
    root = tmp / "brain_mri_svreg"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("data", "logs", "eval", "*.pt", "__pycache__"))
    data = tmp / "synthetic"
    names = ["atlas", "s01", "s02", "s03", "s04", "s05"]
    for k, name in enumerate(names):
        (data / name).mkdir(parents=True)
        image, label = synthetic_subject(k)
        nib.save(nib.Nifti1Image(image, AFFINE), data / name / "image.nii.gz")
        nib.save(nib.Nifti1Image(label, AFFINE), data / name / "label.nii.gz")
    item = {n: {"image": f"{n}/image.nii.gz", "label": f"{n}/label.nii.gz"} for n in names}
    datalist = {
        "atlas": item["atlas"],
        "training": [item["s01"], item["s02"], item["s03"]],
        "validation": [item["s04"]],
        "test": [item["s05"]],
    }
    (data / "datalist.json").write_text(json.dumps(datalist, indent=4))
    overrides = {
        "bundle_root": str(root),
        "data_source": "datalist",
        "dataset_dir": str(data),
        "image_size": [64, 64, 64],
        "num_classes": 3,
        "label_values": [1, 2],
        "label_names": ["outer", "inner"],
        "embed_dim": 12,
        "depths": [1, 1, 1],
        "num_heads": [2, 2, 2],
        "time_steps": 2,
    }
    return root, data, overrides


def workflow(root: Path, configs: list[str], workflow_type: str, **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=[str(root / "configs" / f"{c}.json") for c in configs],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )


def run_workflow(wf: ConfigWorkflow) -> None:
    wf.initialize()
    assert wf.check_properties() in (None, [])
    wf.run()
    wf.finalize()


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(setup):
    root, data, overrides = setup
    wf = workflow(root, ["train"], "train", max_epochs=1, **overrides)
    run_workflow(wf)
    assert wf.max_epochs == 1  # a train property, read through the workflow
    return setup


def test_train_workflow(trained):
    root, _, _ = trained
    run = root / "runs" / "train"  # a run on one's own datalist writes into its run folder, not models/
    assert (run / "models" / "model.pt").is_file()
    assert (run / "models" / "checkpoint_epoch=1.pt").is_file()
    assert list((run / "logs").glob("events.out.tfevents.*"))


def test_evaluate_workflow_layered_on_train(trained):
    root, data, overrides = trained
    out = root / "eval_validation"
    run_workflow(workflow(root, ["train", "evaluate"], "eval", output_dir=str(out), **overrides))
    rows = read_metrics(out / "metrics.csv")
    assert [r["pair"] for r in rows] == ["atlas_image_to_s04_image", "identity", "mean"]
    assert {"dice_outer", "dice_inner", "dice_mean", "ndv"} <= set(rows[0])
    assert 0.0 <= float(rows[0]["dice_mean"]) <= 1.0


def test_inference_workflow(trained):
    root, data, overrides = trained
    out = root / "eval_test"
    ckpt_dir = str(root / "runs" / "train" / "models")
    wf = workflow(root, ["inference"], "infer", output_dir=str(out), ckpt_dir=ckpt_dir, **overrides)
    run_workflow(wf)
    assert type(wf.network_def).__name__ == "DDFOnly"
    pair_dir = out / "atlas_image_to_s05_image"
    for name in ("warped", "warped_label", "ddf", "weight", "jacobian_det"):
        image = nib.load(pair_dir / f"{name}.nii.gz")
        assert image.shape[:3] == SHAPE, name  # cropped back from the padded 64^3
        np.testing.assert_allclose(image.affine, AFFINE, err_msg=name)
    labels = np.unique(np.asarray(nib.load(pair_dir / "warped_label.nii.gz").dataobj))
    assert set(labels.tolist()) <= {0, 1, 2}
    assert [r["pair"] for r in read_metrics(out / "metrics.csv")] == ["atlas_image_to_s05_image", "identity", "mean"]
