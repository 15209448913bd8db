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
"""``configs/synth.json``: training on pairs generated on the fly from package archives, end to end."""

from __future__ import annotations

import shutil

import pytest
import torch
from bundle_testing import BUNDLE, TINY, configs, require_bundle_extras, run_bundle

from tests.data.test_anatomy import write_fake_wheels

require_bundle_extras()

SYNTH_TINY = {**TINY, "image_size": [32, 32, 32], "synth_spacing": 6.0, "epoch_length": 3, "max_epochs": 2,
              "synth_val_pairs": 2}  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    shutil.copytree(BUNDLE / "configs", root / "configs")
    write_fake_wheels(root / "data" / "archives")
    return root


def test_train_on_synthesised_pairs_and_resume(bundle):
    run_bundle(bundle, configs("train", "synth"), overrides=SYNTH_TINY)
    models = bundle / "runs" / "train" / "models"
    assert (models / "model.pt").is_file()
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.endswith("weight") for k in state)
    # a second run with resume continues to a later epoch instead of starting over
    proc = run_bundle(bundle, configs("train", "synth"), "--resume", "true",
                      overrides={**SYNTH_TINY, "max_epochs": 3})  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "continuing after epoch 2" in log
    assert "Epoch[3] Metrics" in log and "Epoch[2] Metrics" not in log


def test_missing_archive_folder_is_named(tmp_path):
    shutil.copytree(BUNDLE / "configs", tmp_path / "configs")
    proc = run_bundle(tmp_path, configs("train", "synth"), overrides=SYNTH_TINY, check=False)
    assert proc.returncode != 0
    assert "archives" in proc.stderr and "pip download" in proc.stderr


def test_hyper_model_trains_on_synthesised_pairs_from_a_plain_model(bundle):
    """The hyper layer composes with the synth layer (one model for all (α, λ_max) on generated pairs), warm-started
    from a plain model with ``--base_model``: the plain weights become the hyper layers' bases."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / f"{n}.json") for n in ("train", "synth")])
    parser.update({"bundle_root": str(bundle), **SYNTH_TINY})
    plain = parser.get_parsed_content("network_def")
    with torch.no_grad():
        for p in plain.parameters():
            p.fill_(0.0123)
    torch.save(plain.state_dict(), bundle / "plain.pt")
    run_bundle(bundle, configs("train", "hyper_train", "synth"), "--base_model", str(bundle / "plain.pt"),
               overrides={**SYNTH_TINY, "max_epochs": 1, "rank": 1})  # fmt: skip
    saved = list((bundle / "runs" / "hyper" / "models").glob("*.pt"))
    assert any(p.name == "hyper_model.pt" for p in saved), saved
    state = torch.load(bundle / "runs" / "hyper" / "models" / "hyper_model.pt", map_location="cpu", weights_only=True)
    bases = [v for k, v in state.items() if k.endswith("weight_generator.base")]
    assert bases and all(abs(v.mean().item() - 0.0123) < 2e-3 for v in bases)  # 3 Adam steps of 1e-4 at most
