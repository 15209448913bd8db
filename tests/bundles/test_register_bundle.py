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
"""``configs/register.json`` end to end: the shipped model and a hyper model on a pair of files, and a missing input."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_testing import BUNDLE, TINY, configs, require_bundle_extras, run_bundle

from svreg_monai.networks.nets import HyperTransMorphTVFSPR
from svreg_monai.utils.world import resample_through
from tests.registration.test_affine import phantom

require_bundle_extras()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("register")
    fixed_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed_affine[:3, 3] = -40.0
    fixed = phantom(fixed_affine, (40, 40, 40))
    moving_affine = np.diag([-1.6, 1.6, 1.6, 1.0])  # LAS, another voxel size
    moving_affine[:3, 3] = [44.0, -42.0, -40.0]
    shift = np.eye(4)
    shift[:3, 3] = [3.0, -2.0, 2.0]
    moving = resample_through(fixed, fixed_affine, moving_affine, (56, 52, 50), matrix=shift)
    out = {"root": root}
    for name, image, affine in (("fixed", fixed, fixed_affine), ("moving", moving, moving_affine)):
        out[name] = root / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(image[0].numpy(), affine), str(out[name]))
        out[f"{name}_label"] = root / f"{name}_seg.nii.gz"
        nib.save(nib.Nifti1Image((image[0].numpy() > 0.4).astype(np.uint8), affine), str(out[f"{name}_label"]))
    return out


def _inputs(files, output_dir) -> list[str]:
    args = []
    for key in ("moving", "fixed", "moving_label", "fixed_label"):
        args += [f"--{key}", str(files[key])]
    return [*args, "--output_dir", str(output_dir), "--spacing", "4.0", "--num_threads", "1"]


def test_register_with_the_shipped_model(files):
    out = files["root"] / "shipped"
    proc = run_bundle(BUNDLE, configs("register"), *_inputs(files, out), "--mode", "network", overrides={})
    report = json.loads((out / "report.json").read_text())
    assert report["parameters"]["mode"] == "network" and report["deformable"]["network"] == "TransMorphTVFSPR"
    assert report["working_grid"]["shape"] == [32, 32, 32]
    dice = report["metrics"]["dice"]
    assert "lambda" in report["metrics"] and dice["registered"]["mean"] > 0.8
    # the affine stage recovers the shift; the network then moves voxels (the demo-trained weights do not improve
    # on an exact affine match: a limit of the shipped weights, not of the pipeline)
    assert dice["affine"]["mean"] > dice["header"]["mean"] + 0.05
    assert report["metrics"]["max_displacement_mm"] > 0.5
    assert (out / "transform.h5").is_file() and (out / "warped.nii.gz").is_file()
    assert "mean Dice" in proc.stdout + proc.stderr


def test_register_optimise_mode(files, tmp_path):
    out = tmp_path / "opt"
    args = [*_inputs(files, out), "--optimise_options#steps", "[3, 2]"]  # mode optimise is the default
    run_bundle(BUNDLE, configs("register"), *args, overrides={})
    report = json.loads((out / "report.json").read_text())
    assert (
        report["deformable"]["init"] == "network" and report["deformable"]["network"]["network"] == "TransMorphTVFSPR"
    )
    assert len(report["deformable"]["history"]) == 5 and report["parameters"]["optimise_options"]["steps"] == [3, 2]
    assert report["parameters"]["mode"] == "optimise" and report["parameters"]["optimise_options"]["field_scale"] == 2


def test_register_with_hyper_codes(files, tmp_path):
    kwargs = {k: v for k, v in TINY.items() if k != "demo_subjects"}
    net = HyperTransMorphTVFSPR(
        img_size=(96, 96, 96), window_size=(3, 3, 3), hidden=96, hyper_layers=6, generator="low_rank", rank=1,
        base_weights=True, alpha_range=(1.0, 1.2), lambda_range=(0.0, 5.0), **kwargs,
    )  # fmt: skip
    torch.save(net.state_dict(), tmp_path / "hyper.pt")
    out = tmp_path / "out"
    args = [*_inputs(files, out), "--checkpoint", str(tmp_path / "hyper.pt"), "--hyper#codes", "[0.3, 0.7]"]
    args += ["--mode", "network"]
    run_bundle(BUNDLE, configs("register", "hyper_register"), *args, overrides=kwargs)
    report = json.loads((out / "report.json").read_text())
    assert report["deformable"]["codes"] == pytest.approx([0.3, 0.7])
    assert report["deformable"]["hyperparameters"] == pytest.approx({"alpha": 1.06, "lambda_max": 3.5})


def test_register_names_a_missing_argument(files, tmp_path):
    proc = run_bundle(
        BUNDLE, configs("register"), "--fixed", str(files["fixed"]), "--output_dir", str(tmp_path / "x"),
        overrides={}, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "moving is required" in proc.stderr
    assert not (tmp_path / "x").exists()
