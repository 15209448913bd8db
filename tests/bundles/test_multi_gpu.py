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
"""Distributed training and evaluation of the brain_mri_svreg bundle: ``torchrun`` with 2 processes on CPU (gloo),
the code path of ``multi_gpu_train.json``/``multi_gpu_evaluate.json`` without GPUs."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from bundle_testing import BUNDLE, TINY, cli, require_bundle_extras

from svreg_monai.networks import TransMorphTVFSPR

require_bundle_extras()
pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with the gloo backend"
)


def torchrun(root: Path, configs: list[str], log_dir: Path, *args: str) -> None:
    """``torchrun --standalone --nproc_per_node=2 -m monai.bundle run`` in ``root``, one log folder per rank."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["--log-dir", str(log_dir), "--redirects", "3", "-m", "monai.bundle", "run"]
    cmd += ["--config_file", json.dumps([f"configs/{c}.json" for c in configs]), "--bundle_root", str(root)]
    cmd += ["--logging_file", "configs/logging.conf", *cli(TINY), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-4000:]}" for p in sorted(log_dir.rglob("*.log")))
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n{logs}")


def rank_logs(log_dir: Path) -> dict[int, str]:
    """stdout + stderr of each local rank (torchrun writes ``<log_dir>/<run>/attempt_0/<rank>/std{out,err}.log``)."""
    logs: dict[int, str] = {}
    for path in sorted(log_dir.rglob("std*.log")):
        rank = int(path.parent.name)
        logs[rank] = logs.get(rank, "") + path.read_text()
    assert sorted(logs) == [0, 1], f"expected the logs of ranks 0 and 1 under {log_dir}"
    return logs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp") / "brain_mri_svreg"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("data", "logs", "eval", "runs", "*.pt", "__pycache__"))
    log_dir = root.parent / "torchrun_train"
    torchrun(root, ["train", "multi_gpu_train"], log_dir, "--max_epochs", "1")
    return root, rank_logs(log_dir)


def test_only_rank_0_saves_and_logs(trained):
    root, logs = trained
    models = root / "runs" / "train" / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_epoch=1.pt", "model.pt"]
    assert "Saved checkpoint at epoch: 1" in logs[0]
    assert "Got new best metric of val_mean_dice" in logs[0]
    for message in ("Saved checkpoint", "new best metric", "Epoch[1] Metrics", "train_loss"):
        assert message not in logs[1], message
    # TensorBoard event files of one process only (their names end with <pid>.<n>)
    pids = {re.match(r"events\.out\.tfevents\.\d+\.[^.]+(?:\.[^.]+)*?\.(\d+)\.\d+$", p.name).group(1)
            for p in (root / "runs" / "train" / "logs").glob("events.out.tfevents.*")}  # fmt: skip
    assert len(pids) == 1, pids


def test_saved_weights_load_into_the_single_process_network(trained):
    root, _ = trained
    net = TransMorphTVFSPR(img_size=(96, 96, 96), embed_dim=12, depths=(1, 1, 1), num_heads=(2, 2, 2), time_steps=2)
    models = root / "runs" / "train" / "models"
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert not [k for k in state if k.startswith("module.")]  # saved from inside the DistributedDataParallel
    net.load_state_dict(state)
    full = torch.load(models / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)
    net.load_state_dict(full["network"])
    assert {"optimizer", "lr_scheduler", "trainer"} <= set(full)


def test_distributed_evaluation_gathers_one_table(trained):
    root, _ = trained
    log_dir = root.parent / "torchrun_evaluate"
    torchrun(root, ["train", "evaluate", "multi_gpu_evaluate"], log_dir)
    logs = rank_logs(log_dir)
    datalist = json.loads((root / "data" / "demo" / "datalist.json").read_text())
    subjects = sorted(Path(item["image"]).parent.name for item in datalist["validation"])
    with open(root / "runs" / "train" / "eval" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # each rank registered one of the 2 validation pairs; rank 0 wrote the rows of both, identity and their mean
    assert sorted(r["pair"] for r in rows[:-2]) == [f"atlas_T1_to_{s}_T1" for s in subjects]
    assert [r["pair"] for r in rows[-2:]] == ["identity", "mean"]
    for subject in subjects:
        assert (root / "runs" / "train" / "eval" / f"atlas_T1_to_{subject}_T1" / "ddf.nii.gz").is_file()
    assert "val_mean_dice" in logs[0] and "val_mean_dice" not in logs[1]
    mean = sum(float(r["dice_mean"]) for r in rows[:-2]) / len(rows[:-2])
    logged = float(re.search(r"val_mean_dice: ([0-9.]+)", logs[0]).group(1))
    assert abs(mean - logged) < 1e-3  # the gathered table agrees with the synchronised Ignite metric
