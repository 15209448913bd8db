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
"""The IXI brain MRI data set in the preprocessed format of the TransMorph / SPR reference implementations.

Layout of a dataset folder::

    <dataset_dir>/
        atlas.pkl
        Train/*.pkl
        Val/*.pkl
        Test/*.pkl

Each ``.pkl`` file is a pickled tuple ``(image, label)`` of two ``(160, 192, 224)`` numpy arrays (1 mm voxels,
affinely aligned to the atlas): ``image`` is a T1-weighted intensity in ``[0, 1]``, ``label`` the FreeSurfer
``aseg`` segmentation with raw FreeSurfer label values. Registration is atlas-to-subject: the atlas is the moving
image and each subject the fixed image. The raw labels are remapped to ``0..45`` through
:data:`FREESURFER_IXI_LABELS` (the reference's ``seg_table``), and the reference reports the Dice score over the 30
structures :data:`IXI_VOI_LABELS` (remapped indices).

The pickle format holds no orientation or spacing: images loaded here get an identity affine (1 mm voxels, array
axes = world axes), which is what the reference assumes. Unpickling runs arbitrary code, so only load files from a
trusted source.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset, MetaTensor
from monai.transforms import Compose, MapTransform

from svreg_monai.utils import RegistrationKeys

__all__ = [
    "FREESURFER_IXI_LABELS",
    "IXI_LABEL_NAMES",
    "IXI_VOI_LABELS",
    "IXI_VOI_NAMES",
    "IXI_IMAGE_SIZE",
    "IXI_SPLITS",
    "remap_labels",
    "load_ixi_pickle",
    "ixi_datalist",
    "LoadIXIPickled",
    "IXIDataset",
]

#: Raw FreeSurfer ``aseg`` labels of the IXI data; raw label ``FREESURFER_IXI_LABELS[i]`` is remapped to ``i``.
FREESURFER_IXI_LABELS: tuple[int, ...] = (
    0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28, 30, 31, 41, 42, 43, 44, 46, 47, 49, 50, 51,
    52, 53, 54, 58, 60, 62, 63, 72, 77, 80, 85, 251, 252, 253, 254, 255,
)  # fmt: skip

#: FreeSurfer lookup-table names of :data:`FREESURFER_IXI_LABELS`, indexed by the remapped label.
IXI_LABEL_NAMES: tuple[str, ...] = (
    "Unknown",
    "Left-Cerebral-White-Matter",
    "Left-Cerebral-Cortex",
    "Left-Lateral-Ventricle",
    "Left-Inf-Lat-Vent",
    "Left-Cerebellum-White-Matter",
    "Left-Cerebellum-Cortex",
    "Left-Thalamus",
    "Left-Caudate",
    "Left-Putamen",
    "Left-Pallidum",
    "3rd-Ventricle",
    "4th-Ventricle",
    "Brain-Stem",
    "Left-Hippocampus",
    "Left-Amygdala",
    "CSF",
    "Left-Accumbens-area",
    "Left-VentralDC",
    "Left-vessel",
    "Left-choroid-plexus",
    "Right-Cerebral-White-Matter",
    "Right-Cerebral-Cortex",
    "Right-Lateral-Ventricle",
    "Right-Inf-Lat-Vent",
    "Right-Cerebellum-White-Matter",
    "Right-Cerebellum-Cortex",
    "Right-Thalamus",
    "Right-Caudate",
    "Right-Putamen",
    "Right-Pallidum",
    "Right-Hippocampus",
    "Right-Amygdala",
    "Right-Accumbens-area",
    "Right-VentralDC",
    "Right-vessel",
    "Right-choroid-plexus",
    "5th-Ventricle",
    "WM-hypointensities",
    "non-WM-hypointensities",
    "Optic-Chiasm",
    "CC_Posterior",
    "CC_Mid_Posterior",
    "CC_Central",
    "CC_Mid_Anterior",
    "CC_Anterior",
)

#: The reference's 30 evaluated structures (volumes of interest), as remapped labels.
IXI_VOI_LABELS: tuple[int, ...] = (
    1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 21, 22, 23, 25, 26, 27, 28, 29, 30, 31, 32, 34, 36,
)  # fmt: skip

#: Names of :data:`IXI_VOI_LABELS`.
IXI_VOI_NAMES: tuple[str, ...] = tuple(IXI_LABEL_NAMES[i] for i in IXI_VOI_LABELS)

#: Spatial shape ``(H, W, D)`` of the preprocessed IXI volumes (1 mm voxels).
IXI_IMAGE_SIZE: tuple[int, int, int] = (160, 192, 224)

#: Split names accepted by :func:`ixi_datalist` and their folders.
IXI_SPLITS: dict[str, str] = {"train": "Train", "val": "Val", "test": "Test"}

_MAX_LISTED = 10


def _format_values(values: np.ndarray) -> str:
    shown = ", ".join(str(v.item()) for v in values[:_MAX_LISTED])
    more = f", ... ({values.size} in total)" if values.size > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def remap_labels(labels: np.ndarray, table: Sequence[int], source: str = "labels") -> np.ndarray:
    """Map label value ``table[i]`` to ``i`` for every voxel.

    Args:
        labels: integer label map of any shape (a floating array is accepted if its values are whole numbers).
        table: distinct label values; ``table[i]`` becomes ``i``.
        source: what ``labels`` is (a file name, a key), used in error messages.

    Returns:
        ``int16`` array of the shape of ``labels`` with values in ``[0, len(table))``.

    Raises:
        ValueError: if ``labels`` holds a value that is not in ``table`` (the message names ``source`` and lists up
            to 10 of the unexpected values), a non-integer value, or if ``table`` is empty or has duplicates.
    """
    table_arr = np.asarray(table)
    if table_arr.ndim != 1 or table_arr.size == 0 or not np.issubdtype(table_arr.dtype, np.integer):
        raise ValueError(f"label table must be a non-empty sequence of integers, got {table!r}.")
    if table_arr.size > np.iinfo(np.int16).max + 1:
        raise ValueError(f"label table has {table_arr.size} entries; at most {np.iinfo(np.int16).max + 1} fit int16.")
    order = np.argsort(table_arr, kind="stable")
    sorted_table = table_arr[order]
    duplicates = sorted_table[1:][sorted_table[1:] == sorted_table[:-1]]
    if duplicates.size:
        raise ValueError(f"label table has duplicate values {_format_values(np.unique(duplicates))}.")
    lab = np.asarray(labels)
    if not (np.issubdtype(lab.dtype, np.integer) or np.issubdtype(lab.dtype, np.bool_)):
        if not np.issubdtype(lab.dtype, np.floating):
            raise ValueError(f"{source} must hold integer labels, got dtype {lab.dtype}.")
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(lab) | (lab != np.round(lab))
        if bad.any():
            raise ValueError(f"{source} contains non-integer label values {_format_values(np.unique(lab[bad]))}.")
        lab = lab.astype(np.int64)
    idx = np.clip(np.searchsorted(sorted_table, lab), 0, sorted_table.size - 1)
    found = sorted_table[idx] == lab
    if not found.all():
        unexpected = np.unique(lab[~found])
        raise ValueError(
            f"{source} contains {unexpected.size} label value(s) that are not in the label table: "
            f"{_format_values(unexpected)}; expected values in {_format_values(sorted_table)}."
        )
    return order[idx].astype(np.int16)


def load_ixi_pickle(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load and validate one ``(image, label)`` pickle of the reference IXI format.

    Args:
        path: the ``.pkl`` file.

    Returns:
        ``(image, label)``: the image as ``float32`` and the raw label array (FreeSurfer values, as stored), both of
        shape ``(H, W, D)`` (``(160, 192, 224)`` for IXI).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file cannot be unpickled, is not a 2-tuple of arrays, the arrays are not 3D with equal
            shapes, or the image holds NaN/Inf values. Every message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IXI pickle '{path}' does not exist.")
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)  # the reference format is a pickle: trusted files only, see the module docstring
    except Exception as e:  # unpickling raises many exception types (EOFError, UnpicklingError, ImportError, ...)
        raise ValueError(f"IXI pickle '{path}' could not be unpickled: {type(e).__name__}: {e}") from e
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        got = f"a {type(obj).__name__} of length {len(obj)}" if isinstance(obj, (tuple, list)) else type(obj).__name__
        raise ValueError(f"IXI pickle '{path}' must hold an (image, label) tuple, got {got}.")
    try:
        image, label = np.asarray(obj[0]), np.asarray(obj[1])
    except Exception as e:
        raise ValueError(f"IXI pickle '{path}': image and label must be numpy arrays ({type(e).__name__}: {e}).") from e
    for name, arr in (("image", image), ("label", label)):
        if arr.ndim != 3:
            raise ValueError(f"IXI pickle '{path}': {name} must be a 3D (H, W, D) array, got shape {arr.shape}.")
        if not (np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)):
            raise ValueError(f"IXI pickle '{path}': {name} must be numeric, got dtype {arr.dtype}.")
    if image.shape != label.shape:
        raise ValueError(f"IXI pickle '{path}': image shape {image.shape} differs from label shape {label.shape}.")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        n_nan, n_inf = int(np.isnan(image).sum()), int(np.isinf(image).sum())
        raise ValueError(f"IXI pickle '{path}': image contains non-finite values ({n_nan} NaN, {n_inf} Inf).")
    return image, label


def ixi_datalist(dataset_dir: str | os.PathLike, split: str) -> list[dict[str, str]]:
    """List the atlas-to-subject pairs of one split.

    Args:
        dataset_dir: folder holding ``atlas.pkl`` and ``Train/``, ``Val/``, ``Test/``.
        split: ``"train"``, ``"val"`` or ``"test"`` (case-insensitive).

    Returns:
        ``[{"moving": <atlas.pkl>, "fixed": <subject.pkl>}, ...]`` sorted by subject file name, paths as strings.

    Raises:
        FileNotFoundError: if ``dataset_dir``, ``atlas.pkl`` or the split folder is missing (names the path).
        ValueError: for an unknown ``split`` or a split folder without ``.pkl`` files (names the folder).
    """
    key = split.lower() if isinstance(split, str) else split
    if key not in IXI_SPLITS:
        raise ValueError(f"split must be one of {tuple(IXI_SPLITS)}, got {split!r}.")
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"IXI dataset folder '{root}' does not exist.")
    atlas = root / "atlas.pkl"
    if not atlas.is_file():
        raise FileNotFoundError(f"IXI atlas '{atlas}' does not exist.")
    folder = root / IXI_SPLITS[key]
    if not folder.is_dir():
        raise FileNotFoundError(f"IXI split folder '{folder}' (split {split!r}) does not exist.")
    subjects = sorted(p for p in folder.glob("*.pkl") if p.is_file())
    if not subjects:
        raise ValueError(f"IXI split folder '{folder}' (split {split!r}) contains no .pkl files.")
    return [{RegistrationKeys.MOVING: str(atlas), RegistrationKeys.FIXED: str(p)} for p in subjects]


def _as_metatensor(array: np.ndarray, filename: str) -> MetaTensor:
    """``(H, W, D)`` array -> ``(1, H, W, D)`` MetaTensor with an identity affine and ``filename_or_obj``."""
    affine = np.eye(4)
    meta = {
        "filename_or_obj": filename,
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(array.shape),
        "original_channel_dim": float("nan"),  # as LoadImage for a channel-less file, before adding the channel
        "space": "RAS",
    }
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)[None]), affine=torch.from_numpy(affine), meta=meta)


class LoadIXIPickled(MapTransform):
    """Load IXI ``(image, label)`` pickles named by the item's paths (see :func:`load_ixi_pickle`).

    For each ``key``/``label_key`` pair, the path under ``key`` is replaced by the image, a ``(1, H, W, D)``
    ``float32`` :class:`~monai.data.MetaTensor`, and the label is written under ``label_key``, a ``(1, H, W, D)``
    MetaTensor: ``int16`` in ``0..len(label_table)-1`` if ``remap`` else the raw stored labels. Both carry
    ``meta["filename_or_obj"]`` = the pickle path, so downstream checks and writers can name the file, and an
    identity affine (the pickle format has no geometry; the reference treats the array axes as 1 mm world axes).

    The files under ``cache_keys`` (by default the moving image, i.e. the atlas, which every item loads) are kept in a
    small in-memory cache keyed by path, modification time and size; items receive copies, so in-place transforms
    downstream cannot alter the cache.

    Args:
        keys: keys holding pickle paths, default ``("moving", "fixed")``.
        label_keys: keys receiving the labels, one per key (None to drop that key's labels), or None for no labels.
        remap: remap the raw labels through ``label_table`` with :func:`remap_labels`.
        label_table: raw label values, default :data:`FREESURFER_IXI_LABELS`.
        cache_keys: keys whose files are cached.
        cache_size: maximum number of cached files (least recently used evicted first).
        allow_missing_keys: skip keys missing from the item instead of raising.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable = (RegistrationKeys.MOVING, RegistrationKeys.FIXED),
        label_keys: Sequence[Hashable | None] | Hashable | None = (
            RegistrationKeys.MOVING_LABEL,
            RegistrationKeys.FIXED_LABEL,
        ),
        remap: bool = True,
        label_table: Sequence[int] = FREESURFER_IXI_LABELS,
        cache_keys: Sequence[Hashable] = (RegistrationKeys.MOVING,),
        cache_size: int = 4,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if label_keys is None:
            label_keys = (None,) * len(self.keys)
        elif isinstance(label_keys, str) or not isinstance(label_keys, Sequence):
            label_keys = (label_keys,)
        if len(label_keys) != len(self.keys):
            raise ValueError(
                f"label_keys must have one entry per key ({len(self.keys)} keys {tuple(self.keys)}), "
                f"got {tuple(label_keys)}."
            )
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}.")
        self.label_keys = tuple(label_keys)
        self.remap = bool(remap)
        self.label_table = tuple(int(v) for v in label_table)
        self.cache_keys = frozenset(cache_keys)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _load(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        image, label = load_ixi_pickle(path)
        if self.remap:
            label = remap_labels(label, self.label_table, source=f"label of IXI pickle '{path}'")
        return image, label

    def _load_cached(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            stat = os.stat(path)
        except OSError:
            return self._load(path)  # raises a FileNotFoundError naming the file
        cache_key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(cache_key)
        if cached is None:
            cached = self._load(path)
            if self.cache_size == 0:
                return cached
            self._cache[cache_key] = cached
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(cache_key)
        return cached[0].copy(), cached[1].copy()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key, label_key in self.key_iterator(d, self.label_keys):
            path = d[key]
            if not isinstance(path, (str, os.PathLike)):
                raise ValueError(f"item key {key!r} must hold the path of an IXI pickle, got {type(path).__name__}.")
            path = os.fspath(path)
            image, label = self._load_cached(path) if key in self.cache_keys else self._load(path)
            d[key] = _as_metatensor(image, path)
            if label_key is not None:
                d[label_key] = _as_metatensor(label, path)
        return d


class IXIDataset(Dataset):
    """One split of the IXI data as a MONAI :class:`~monai.data.Dataset` of atlas-to-subject pairs.

    Items are ``{"moving": (1, H, W, D), "fixed": (1, H, W, D), "moving_label": ..., "fixed_label": ...}`` from
    :func:`ixi_datalist` loaded by :class:`LoadIXIPickled`, followed by ``transform``.

    Args:
        dataset_dir: folder holding ``atlas.pkl`` and ``Train/``, ``Val/``, ``Test/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: transform(s) applied after loading: a callable or a sequence of callables.
        remap: remap the labels to ``0..45`` (see :class:`LoadIXIPickled`).
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        split: str,
        transform: Callable | Sequence[Callable] | None = None,
        remap: bool = True,
    ) -> None:
        if transform is None:
            user: list[Callable] = []
        elif callable(transform):
            user = [transform]
        else:
            user = list(transform)
        super().__init__(data=ixi_datalist(dataset_dir, split), transform=Compose([LoadIXIPickled(remap=remap), *user]))
