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
"""End-to-end runs of the brain_mri_svreg bundle on tiny demo data, through ``python -m monai.bundle``."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_testing import BUNDLE, TINY, cli, configs, require_bundle_extras, run_bundle

require_bundle_extras()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A copy of the bundle (with its shipped weights) whose demo data set is created once for the module."""
    root = tmp_path_factory.mktemp("bundle") / "brain_mri_svreg"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("data", "logs", "eval", "runs", "checkpoint_*.pt"))
    from svreg_monai.apps import ensure_dataset

    ensure_dataset(root / "data" / "demo", source="demo", num_subjects=5)
    return root


@pytest.fixture(scope="module")
def trained(bundle):
    proc = run_bundle(bundle, configs("train"), "--max_epochs", "1")
    return bundle, proc.stdout + proc.stderr


def test_train_writes_into_its_run_folder_not_over_the_shipped_weights(trained):
    root, log = trained
    run = root / "runs" / "train"
    assert (run / "models" / "checkpoint_epoch=1.pt").is_file()
    assert (run / "models" / "model.pt").is_file()
    assert list((run / "logs").glob("events.out.tfevents.*"))
    for name in ("model.pt", "hyper_model.pt"):  # the shipped weights are untouched
        assert (root / "models" / name).read_bytes() == (BUNDLE / "models" / name).read_bytes()
    assert sorted(p.name for p in (root / "models").iterdir()) == ["hyper_model.pt", "model.pt"]
    assert not (root / "logs").exists()
    for name in ("val_mean_dice", "val_identity_dice", "val_ndv", "train_similarity", "train_prior", "skipped_steps"):
        assert re.search(rf"{name}: -?\d", log), name
    assert "Iter:" not in log  # the progress bar alone reports iterations (no per-iteration INFO line beside it)


def test_evaluate_and_infer_write_outputs_with_input_affine(trained):
    root, _ = trained
    run_bundle(root, configs("train", "evaluate"))  # the run's model, into the run's eval/
    rows = (root / "runs" / "train" / "eval" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("pair,moving,fixed,dice_CSF,dice_GM,dice_WM,dice_mean,ndp,ndv")
    assert len(rows) == 1 + 2 + 2  # header, 2 validation pairs, identity, mean
    assert rows[-2].startswith("identity,,,") and rows[-1].startswith("mean,,,")

    proc = run_bundle(root, configs("inference"), "--ckpt_dir", str(root / "runs" / "train" / "models"))
    log = proc.stdout + proc.stderr
    assert "Registration results, 2 pair(s)" in log and re.search(r"identity\s+\d\.\d{4}", log)
    assert re.search(r"mean(\s+\d\.\d{4}){7}", log)  # Dice of 3 structures, mean Dice, NDP, NDV, SDlogJ
    datalist = json.loads((root / "data" / "demo" / "datalist.json").read_text())
    assert len(datalist["test"]) == 2
    for item in datalist["test"]:
        subject = Path(item["image"]).parent.name
        pair_dir = root / "eval" / f"atlas_T1_to_{subject}_T1"
        fixed = nib.load(root / "data" / "demo" / item["image"])
        for name in ("warped", "warped_label", "ddf", "weight", "jacobian_det"):
            image = nib.load(pair_dir / f"{name}.nii.gz")
            np.testing.assert_allclose(image.affine, fixed.affine, err_msg=name)
            assert image.shape[:3] == fixed.shape
        weight = np.asarray(nib.load(pair_dir / "weight.nii.gz").dataobj)
        assert weight.min() > 0 and weight.max() <= 1
        assert (pair_dir / "figure.png").is_file()
    assert (root / "eval" / "metrics.csv").read_text().count("\n") == 2 + 3


def test_inference_at_another_size_keeps_the_trained_window(trained, tmp_path):
    # the model was trained at image_size 96 (window 3); at 128 the window still comes from the checkpoint
    root, _ = trained
    models = str(root / "runs" / "train" / "models")
    proc = run_bundle(
        root, configs("inference"), "--ckpt_dir", models, "--image_size", "[128, 96, 96]", "--output_dir",
        str(tmp_path / "out"),
    )  # fmt: skip
    assert "Registration results, 2 pair(s)" in proc.stdout + proc.stderr
    # an option of the wrapped network given to the zoo wrapper is named, with where it belongs
    proc = run_bundle(root, configs("inference"), "--ckpt_dir", models, "--network_def#img_size", "[64,64,64]",
                      check=False)  # fmt: skip
    assert proc.returncode != 0 and "got ['img_size'], which are options of the wrapped network" in proc.stderr


def test_check_properties_train_and_infer(bundle):
    from monai.bundle import ConfigWorkflow

    for config, workflow_type in (("train", "train"), ("inference", "infer")):
        workflow = ConfigWorkflow(
            config_file=str(bundle / "configs" / f"{config}.json"),
            meta_file=str(bundle / "configs" / "metadata.json"),
            logging_file=str(bundle / "configs" / "logging.conf"),
            workflow_type=workflow_type,
            bundle_root=str(bundle),
            demo_subjects=5,
        )
        workflow.initialize()
        assert workflow.check_properties() in (None, []), config


def test_resume_after_kill_keeps_finished_epochs(bundle, tmp_path):
    root = tmp_path / "resume"
    shutil.copytree(bundle, root, ignore=shutil.ignore_patterns("logs", "eval", "runs"))
    ckpt = root / "runs" / "train" / "models"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs("train"), "--bundle_root", str(root)]
    cmd += ["--logging_file", "configs/logging.conf", *cli(TINY), "--max_epochs", "50"]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not list(ckpt.glob("checkpoint_epoch=*.pt")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(0.5)  # now inside a later epoch
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = sorted(int(re.search(r"=(\d+)", p.name).group(1)) for p in ckpt.glob("checkpoint_epoch=*.pt"))
    assert saved, "training was killed before its first epoch checkpoint"
    done = saved[-1]
    state = torch.load(ckpt / f"checkpoint_epoch={done}.pt", map_location="cpu", weights_only=False)
    assert state["trainer"]["iteration"] == done * state["trainer"]["epoch_length"]  # whole epochs only

    out = run_bundle(root, configs("train"), "--max_epochs", str(done + 1), "--resume", "true")
    log = out.stdout + out.stderr
    assert f"checkpoint_epoch={done}.pt; continuing after epoch {done}" in log
    assert f"Epoch[{done + 1}] Metrics" in log and f"Epoch[{done}] Metrics" not in log
    assert sorted(p.name for p in ckpt.glob("checkpoint_epoch=*.pt")) == [f"checkpoint_epoch={done + 1}.pt"]


def test_missing_dataset_dir_is_named(tmp_path):
    missing = tmp_path / "no_such_data"
    proc = run_bundle(BUNDLE, configs("train"), "--data_source", "datalist", "--dataset_dir", str(missing), check=False)
    assert proc.returncode != 0
    assert re.search(rf"FileNotFoundError: .*{re.escape(str(missing))}", proc.stderr)
