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
"""Shared helpers of the bundle tests: the bundle path, the tiny-run overrides and the CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["BUNDLE", "TINY", "cli", "configs", "require_bundle_extras", "run_bundle"]

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brain_mri_svreg"
#: a reduced network and data set so that each bundle run takes seconds on 2 CPU cores
TINY = {"demo_subjects": 5, "embed_dim": 12, "depths": [1, 1, 1], "num_heads": [2, 2, 2], "time_steps": 2}


def require_bundle_extras() -> None:
    """Skip the calling test module when the bundle extras are missing."""
    pytest.importorskip("fire", reason="monai.bundle's command line needs `fire` (pip install svreg-monai[bundle])")
    pytest.importorskip("nilearn", reason="the demo data set needs `nilearn` (pip install svreg-monai[bundle])")


def cli(overrides: dict) -> list[str]:
    """``{"embed_dim": 12}`` -> ``["--embed_dim", "12"]`` (values as JSON, which the bundle CLI parses)."""
    return [arg for k, v in overrides.items() for arg in (f"--{k}", json.dumps(v))]


def configs(*names: str) -> str:
    """The ``--config_file`` value for ``configs/<name>.json`` layers, in order."""
    return json.dumps([f"configs/{n}.json" for n in names])


def run_bundle(
    root: Path, config_file: str, *args: str, overrides: dict = TINY, check: bool = True, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` in ``root`` with the tiny overrides; raise with the logs on failure."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--bundle_root", str(root)]
    cmd += ["--logging_file", "configs/logging.conf", *cli(overrides), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bundle run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc
