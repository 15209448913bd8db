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
"""End-to-end runs of the hyper variant of brain_mri_svreg (hyper training, test-time control, grid search) and of
its Optuna tuning workflow, on tiny demo data."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import bundle_testing
import nibabel as nib
import numpy as np
import pytest
import torch

SUBJECTS = 6  # 2 training pairs (one batch of 2), 2 validation and 2 test pairs
TINY = {**bundle_testing.TINY, "demo_subjects": SUBJECTS}
# the tests' own hyper model, not the shipped one (models/hyper_model.pt, excluded from the copied bundle)
HYPER_TINY = {**TINY, "rank": 2, "ckpt_dir": "$os.path.join(@bundle_root, 'runs', 'hyper', 'models')"}
bundle_testing.require_bundle_extras()
BUNDLE = bundle_testing.BUNDLE
_configs = bundle_testing.configs
_cli = bundle_testing.cli


def run_bundle(root: Path, configs: str, overrides: dict, *args: str, timeout: int = 600) -> str:
    proc = bundle_testing.run_bundle(root, configs, *args, overrides=overrides, timeout=timeout)
    return proc.stdout + proc.stderr


def _workflow(root: Path, names: tuple[str, ...], workflow_type: str, **overrides):
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=[str(root / "configs" / f"{n}.json") for n in names],
        meta_file=str(root / "configs" / "metadata.json"),
        workflow_type=workflow_type,
        bundle_root=str(root),
        **overrides,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A copy of the bundle (without shipped weights) whose demo data set is created once for the module."""
    root = tmp_path_factory.mktemp("hyper_bundle") / "brain_mri_svreg"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("data", "logs", "eval", "runs", "tuning", "*.pt"))
    from svreg_monai.apps import ensure_dataset

    ensure_dataset(root / "data" / "demo", source="demo", num_subjects=SUBJECTS)
    return root


@pytest.fixture(scope="module")
def hyper_trained(bundle):
    """Hyper training, 2 iterations with batch 2, run in-process to record the codes of every iteration."""
    from ignite.engine import Events

    overrides = {**HYPER_TINY, "max_epochs": 1, "learning_rate": 0.01}
    overrides.update({"train#dataloader#batch_size": 2, "train#trainer#epoch_length": 2})
    workflow = _workflow(bundle, ("train", "hyper_train"), "train", **overrides)
    workflow.initialize()
    properties = workflow.check_properties()
    records: dict[str, list] = {"train": [], "val": []}

    def keep(engine, name, keys):  # the targets of RegistrationPrepareBatch, per sample when the engine decollates
        out = engine.state.output
        rows = [o["label"] for o in out] if isinstance(out, list) else None
        records[name].append(
            {k: torch.stack([torch.as_tensor(r[k]) for r in rows]) if rows else out["label"][k].clone() for k in keys}
        )

    for engine_id, name, keys in (
        ("train#trainer", "train", ("hyper", "lambda_max", "prior_param")),
        ("validate#evaluator", "val", ("hyper",)),
    ):
        workflow.parser.get_parsed_content(engine_id).add_event_handler(Events.ITERATION_COMPLETED, keep, name, keys)
    workflow.run()
    workflow.finalize()
    return bundle, records, properties


def test_hyper_training_draws_codes_per_sample_and_iteration(hyper_trained):
    root, records, properties = hyper_trained
    assert properties in (None, [])  # the zoo's train properties still resolve with the hyper layer
    train = records["train"]
    assert len(train) == 2
    for rec in train:
        codes = rec["hyper"]
        assert codes.shape == (2, 2) and codes.min() >= 0 and codes.max() <= 1
        assert not torch.equal(codes[0], codes[1])  # one setting per sample
        torch.testing.assert_close(rec["prior_param"], 1 + 0.2 * codes[:, 0])  # alpha = 1 + 0.2 b
        torch.testing.assert_close(rec["lambda_max"], 5 * codes[:, 1])  # lambda_max = 5 r
    assert not torch.equal(train[0]["hyper"], train[1]["hyper"])  # new codes every iteration
    assert records["val"] and all(torch.allclose(r["hyper"], torch.tensor([0.05, 0.5])) for r in records["val"])
    # the hyper run has its own folder: no clash with the plain model's run or the shipped weights
    run = root / "runs" / "hyper"
    assert sorted(p.name for p in (run / "models").iterdir()) == ["checkpoint_epoch=1.pt", "hyper_model.pt"]
    assert not (root / "runs" / "train").exists() and not list((root / "models").glob("*.pt"))
    state = torch.load(run / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)
    assert "generator" in state["hyper_sampler"]  # the code sequence resumes with the training
    assert list((run / "logs").glob("events.out.tfevents.*"))


def test_inference_at_two_settings_gives_different_fields(hyper_trained):
    root, _, _ = hyper_trained
    log = run_bundle(root, _configs("inference", "hyper_inference"), HYPER_TINY, "--hyper#alpha", "1.1",
                     "--hyper#lambda_max", "2.0")  # fmt: skip
    assert "Restored all variables from" in log and "hyper_model.pt" in log
    workflow = _workflow(root, ("inference", "hyper_inference"), "infer", **HYPER_TINY, **{"hyper#codes": [0.9, 0.9]})
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    workflow.run()
    workflow.finalize()

    first, second = root / "eval" / "hyper_alpha=1.1_lambda_max=2", root / "eval" / "hyper_alpha=1.18_lambda_max=4.5"
    assert json.loads((first / "hyper.json").read_text()) == {
        "prior": "beta", "codes": [0.5, 0.4], "alpha": 1.1, "lambda_max": 2.0, "extrapolate": False
    }  # fmt: skip
    assert json.loads((second / "hyper.json").read_text())["codes"] == [0.9, 0.9]
    datalist = json.loads((root / "data" / "demo" / "datalist.json").read_text())
    for item in datalist["test"]:
        pair = f"atlas_T1_to_{Path(item['image']).parent.name}_T1"
        fixed = nib.load(root / "data" / "demo" / item["image"])
        for name in ("ddf", "weight"):
            a, b = (nib.load(d / pair / f"{name}.nii.gz") for d in (first, second))
            np.testing.assert_allclose(a.affine, fixed.affine)
            assert a.shape[:3] == fixed.shape
            assert np.abs(np.asarray(a.dataobj) - np.asarray(b.dataobj)).max() > 1e-6, (pair, name)
        assert (first / pair / "figure.png").is_file()
    for out in (first, second):
        with open(out / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["pair"] for r in rows][-2:] == ["identity", "mean"] and len(rows) == 4


@pytest.mark.parametrize(
    "hyper,match",
    [
        ({"hyper#alpha": 1.5, "hyper#lambda_max": 2.0}, r"alpha must lie in the range .* \[1, 1.2\], got 1.5"),
        ({"hyper#alpha": 1.1, "hyper#lambda_max": 7.5}, r"lambda_max must lie in the range .* \[0, 5\], got 7.5"),
        ({"hyper#codes": [1.2, 0.5]}, r"hyper#codes must lie in the trained range \[0, 1\]"),
    ],
)
def test_inference_rejects_settings_outside_the_trained_range(bundle, hyper, match):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / f"{n}.json") for n in ("inference", "hyper_inference")])
    parser.update({"bundle_root": str(bundle), **HYPER_TINY, **hyper})
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("hyper_codes")
    assert isinstance(info.value.__cause__, ValueError) and re.search(match, str(info.value.__cause__))
    parser.update({"hyper#extrapolate": "true"})
    assert len(parser.get_parsed_content("hyper_codes", lazy=False)) == 2  # accepted when extrapolating


def test_grid_search_writes_landscapes_best_codes_and_figure(hyper_trained):
    root, _, _ = hyper_trained
    log = run_bundle(root, _configs("train", "hyper_train", "grid_search"), HYPER_TINY, "--grid#step", "0.5",
                     "--grid#checkpoint", str(root / "runs" / "hyper" / "models" / "hyper_model.pt"))  # fmt: skip
    out = root / "eval" / "grid_search"
    assert {p.name for p in out.iterdir()} == {
        "grid_search.npz", "grid_search.csv", "grid_search.json", "best_codes.json", "dice.png", "ndv.png",
        "hyper_grid_figure.png",
    }  # fmt: skip
    with np.load(out / "grid_search.npz") as data:
        np.testing.assert_allclose(data["b_codes"], [0.0, 0.5, 1.0])
        np.testing.assert_allclose(data["lambda_max"], [0.0, 2.5, 5.0])
        assert data["dice"].shape == data["ndv"].shape == (3, 3)
        assert np.isfinite(data["dice"]).all() and (data["dice"] > 0).all()
    assert (out / "grid_search.csv").read_text().count("\n") == 1 + 9
    report = json.loads((out / "grid_search.json").read_text())
    best = report["best"]
    assert best["codes"][0] in (0.0, 0.5, 1.0) and best["codes"][1] in (0.0, 0.5, 1.0)
    assert json.loads((out / "best_codes.json").read_text()) == {"hyper#codes": best["codes"]}
    assert "grid point 9/9" in log and "grid search best (max dice): codes" in log


def test_tune_study_runs_resumes_from_sqlite_and_writes_best_params(bundle, caplog):
    optuna = pytest.importorskip("optuna", reason="Optuna is not installed (pip install svreg-monai[tune])")
    from monai.bundle import ConfigParser

    tune = {"tune#n_trials": 2, "tune#trial_epochs": 1}
    log = run_bundle(bundle, _configs("train", "tune"), {**TINY, **tune})
    out = bundle / "tuning"
    study = optuna.load_study(study_name="brain_mri_svreg", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for n in (0, 1):
        assert f"trial {n} started: alpha=" in log and f"trial {n} finished: best val_mean_dice" in log
        assert (out / f"trial_000{n}" / "models" / "model.pt").is_file()  # per-trial checkpoints
        assert list((out / f"trial_000{n}" / "logs").glob("events.out.tfevents.*"))
    assert not (bundle / "models" / "model.pt").exists()
    best = json.loads((out / "best_params.json").read_text())
    assert set(best) == {"alpha", "lambda_max"} and 1.01 <= best["alpha"] <= 1.2 and 0.5 <= best["lambda_max"] <= 5

    # resume the study from its SQLite file for a third trial, pruned by a threshold no Dice reaches
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / f"{n}.json") for n in ("train", "tune")])
    parser.update({"bundle_root": str(bundle), **TINY, **tune, "tune#n_trials": 3})
    tuner = parser.get_parsed_content("tuner")
    tuner.pruner = optuna.pruners.ThresholdPruner(lower=1.5)
    with caplog.at_level(logging.INFO, logger="svreg_monai.apps.tuning"):
        assert tuner.run() == best
    assert "2 finished trial(s) found, 1 to run" in caplog.text and "trial 2 pruned at epoch 1" in caplog.text
    study = optuna.load_study(study_name="brain_mri_svreg", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    with open(out / "trials.csv", newline="") as f:
        assert [row["state"] for row in csv.DictReader(f)] == ["COMPLETE", "COMPLETE", "PRUNED"]

    # the best parameters are a config layer for a following training
    layered = ConfigParser()
    layered.read_config([str(bundle / "configs" / "train.json"), str(out / "best_params.json")])
    assert layered["alpha"] == best["alpha"] and layered["lambda_max"] == best["lambda_max"]
