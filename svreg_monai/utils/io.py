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
"""Atomic file output: a generic writer, NIfTI images and vector fields, CSV tables and JSON documents.

Every function here writes to a temporary file in the destination's directory, flushes it to disk and renames it
over the destination with :func:`os.replace`, which is atomic on POSIX and Windows. An interrupted run therefore
leaves either the previous file or the complete new one, never a truncated file; the temporary file is removed
when the write fails.

NIfTI layout written by :func:`save_nifti` (arrays are channel-first, as in MONAI, ``(C, *S)``):

- ``C == 1``: a scalar image stored with the spatial shape ``S`` (2D or 3D);
- ``C > 1``: a vector field (e.g. a displacement in voxels, channel order = array axes) stored as the 5D NIfTI
  array ``(*S, 1, C)`` (2D fields as ``(H, W, 1, 1, C)``) with ``intent_code`` ``'vector'``, the NIfTI-1
  convention for vectors: dimension 4 is time (length 1) and dimension 5 holds the components. A multi-channel
  image (``vector=False``) uses the same layout without the intent.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from monai.utils import convert_to_tensor

__all__ = [
    "atomic_path",
    "atomic_write",
    "describe_source",
    "file_stem",
    "pair_id_from_filenames",
    "save_nifti",
    "write_csv",
    "write_json",
]

_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


def _temp_suffix(name: str) -> str:
    """File suffix kept on the temporary file: the last suffix, plus the one before it for compressed files."""
    suffixes = Path(name).suffixes
    if not suffixes:
        return ""
    if suffixes[-1].lower() in _COMPRESSION_SUFFIXES and len(suffixes) > 1:
        return "".join(suffixes[-2:])
    return suffixes[-1]


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    """Flush a file (or, best effort, a directory entry) to disk."""
    flags = os.O_RDONLY
    if directory:
        if os.name == "nt":  # directories cannot be opened for fsync on Windows
            return
        flags |= getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write instead of ``path``; on success the file is renamed over ``path``.

    For writers that only accept a file name (e.g. :func:`nibabel.save`). The temporary file
    ``.<name>.tmp-<pid>-<random><suffix>`` is created empty in the directory of ``path`` (so that the final
    :func:`os.replace` stays on one file system) and keeps the suffix of ``path`` (``.nii.gz`` for a compressed
    NIfTI), since some writers choose the format from it. It is created with the default permissions (umask
    applied), like a file opened with ``open(path, "w")``.

    Args:
        path: destination file. Its directory must exist.
        fsync: flush the written file to disk before the rename (and the directory entry after it).

    Yields:
        the temporary path.

    Raises:
        FileNotFoundError: when the directory of ``path`` does not exist.
        ValueError: when ``path`` names an existing directory.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"path must be a file, got the existing directory {str(path)!r}.")
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: the directory {str(directory)!r} does not exist.")
    suffix = _temp_suffix(path.name)
    while True:
        tmp = directory / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        break
    try:
        yield tmp
        if fsync:
            _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_path(directory, directory=True)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: str = "wb",
    encoding: str | None = None,
    newline: str | None = None,
    fsync: bool = True,
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on a clean exit it replaces ``path`` atomically.

    If the ``with`` block raises (``KeyboardInterrupt`` included), the temporary file is deleted and an existing
    ``path`` is left untouched.

    Example::

        with atomic_write("out/figure.png") as f:
            fig.savefig(f, format="png")

    Args:
        path: destination file. Its directory must exist.
        mode: ``"wb"`` (binary) or ``"w"``/``"wt"`` (text).
        encoding: text encoding (text mode only; default UTF-8).
        newline: newline handling in text mode, as for :func:`open` (``""`` for the :mod:`csv` module).
        fsync: flush the file to disk before the rename.

    Yields:
        the open file object.

    Raises:
        ValueError: when ``mode`` is not a write mode listed above.
    """
    if mode not in ("wb", "w", "wt"):
        raise ValueError(f"mode must be 'wb', 'w' or 'wt', got {mode!r}.")
    binary = "b" in mode
    if binary and (encoding is not None or newline is not None):
        raise ValueError(f"encoding and newline apply to text mode only, got mode {mode!r}.")
    with atomic_path(path, fsync=False) as tmp:
        kwargs: dict[str, Any] = {} if binary else {"encoding": encoding or "utf-8", "newline": newline}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    if fsync:
        _fsync_path(Path(path).parent if str(Path(path).parent) else Path("."), directory=True)


def _to_numpy(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        x = convert_to_tensor(x, track_meta=False)
        return x.cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array or a torch.Tensor, got {type(x).__name__}.")


def _nifti_affine(affine: np.ndarray | torch.Tensor | None, spatial_dims: int) -> np.ndarray:
    """Return a 4 x 4 float64 affine; a 3 x 3 (2D) affine is embedded with an identity third axis."""
    if affine is None:
        return np.eye(4)
    aff = np.asarray(_to_numpy(affine, "affine"), dtype=np.float64)
    if aff.shape == (4, 4):
        return aff
    if aff.shape == (3, 3) and spatial_dims == 2:
        out = np.eye(4)
        out[:2, :2] = aff[:2, :2]
        out[:2, 3] = aff[:2, 2]
        return out
    allowed = "(4, 4)" if spatial_dims == 3 else "(3, 3) or (4, 4)"
    raise ValueError(f"affine for a {spatial_dims}D image must have shape {allowed}, got {aff.shape}.")


def save_nifti(
    array: np.ndarray | torch.Tensor,
    affine: np.ndarray | torch.Tensor | None,
    path: str | os.PathLike,
    dtype: np.dtype | type | str | None = None,
    vector: bool = True,
) -> Path:
    """Write a channel-first image or vector field to a NIfTI-1 file, atomically.

    ``C == 1`` writes a scalar image of shape ``S``. ``C > 1`` writes the 5D array ``(*S, 1, C)`` (2D data as
    ``(H, W, 1, 1, C)``), with ``intent_code`` ``'vector'`` when ``vector`` is True (a vector field, e.g. a
    displacement) and no intent otherwise (a multi-channel image); read it back with
    ``np.moveaxis(nib.load(path).get_fdata()[..., 0, :], -1, 0)`` (and ``[:, :, :, 0]`` first for 2D). The
    values are written as they are: a displacement stays in voxels, in the channel order of the array axes.

    Args:
        array: ``(C, H, W[, D])`` numpy array or tensor (a :class:`~monai.data.MetaTensor` is fine).
        affine: voxel-to-world matrix, ``(4, 4)`` (or ``(3, 3)`` for a 2D image, embedded into 3D), world
            coordinates in RAS millimetres as in MONAI's metadata; ``None`` writes the identity.
        path: destination; ``.nii.gz`` is gzip-compressed, ``.nii`` is not. Its directory must exist.
        dtype: on-disk data type (e.g. ``np.float32``, ``np.int16``); default: the array's dtype (``bool`` is
            stored as ``uint8``).
        vector: mark a multi-channel array as a vector field (``intent_code`` ``'vector'``).

    Returns:
        the written path.

    Raises:
        ValueError: when ``array`` is not ``(C, H, W[, D])``, ``affine`` has the wrong shape or ``path`` does not
            end with ``.nii`` or ``.nii.gz``.
    """
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ValueError(f"path must end with '.nii' or '.nii.gz', got {str(path)!r}.")
    data = _to_numpy(array, "array")
    if data.ndim not in (3, 4):
        raise ValueError(f"array must be channel-first (C, H, W) or (C, H, W, D), got shape {data.shape}.")
    spatial_dims = data.ndim - 1
    aff = _nifti_affine(affine, spatial_dims)
    if dtype is None:
        dtype = np.uint8 if data.dtype == np.bool_ else data.dtype
    dtype = np.dtype(dtype)
    channels = data.shape[0]
    if channels == 1:
        volume = data[0]
    else:
        spatial = data.shape[1:] + (1,) * (3 - spatial_dims)
        volume = np.moveaxis(data, 0, -1).reshape(*spatial, 1, channels)
    volume = np.ascontiguousarray(volume, dtype=dtype)

    import nibabel as nib  # a dependency, imported lazily to keep `import svreg_monai.utils` light

    image = nib.Nifti1Image(volume, aff)
    image.header.set_data_dtype(dtype)
    image.header.set_qform(aff, code=1)
    image.header.set_sform(aff, code=1)
    image.header.set_xyzt_units("mm", "sec")
    if channels > 1 and vector:
        image.header.set_intent("vector", (), name="vector")
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path


def write_csv(
    path: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    fieldnames: Sequence[str] | None = None,
) -> Path:
    """Write ``rows`` as a CSV table with a header line, atomically.

    Floats are written with :func:`repr` precision (``nan`` for missing values), so the file reads back exactly.

    Args:
        rows: one mapping per line, column name -> value; a missing column is written as an empty cell.
        fieldnames: the columns, in order; default: the keys of the rows in order of first appearance.
        path: destination file. Its directory must exist.

    Returns:
        the written path.

    Raises:
        ValueError: when a row has a key that is not in ``fieldnames``.
    """
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(key for row in rows for key in row))
    else:
        fieldnames = list(fieldnames)
        known = set(fieldnames)
        for i, row in enumerate(rows):
            extra = [key for key in row if key not in known]
            if extra:
                raise ValueError(f"row {i} has columns {extra} that are not in fieldnames {fieldnames}.")
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return Path(path)


def _csv_value(value: Any) -> Any:
    if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return repr(value)
    return value


def _json_value(value: Any) -> Any:
    """JSON-compatible form of tensors, numpy values, paths and non-finite floats (written as ``null``)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist() if value.numel() != 1 else value.item()
    elif isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    elif isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def write_json(path: str | os.PathLike, content: Mapping[str, Any], indent: int = 4) -> Path:
    """Write ``content`` as a JSON document, atomically.

    Tensors and numpy arrays become (nested) lists, their scalars numbers, paths strings; NaN and infinities are
    written as ``null`` so that the file is strict JSON (readable by MONAI's config parser as a config layer).

    Args:
        path: destination file. Its directory must exist.
        content: the document, a mapping.
        indent: indentation of the JSON text.

    Returns:
        the written path.

    Raises:
        ValueError: when ``content`` is not a mapping.
    """
    if not isinstance(content, Mapping):
        raise ValueError(f"content must be a mapping (a JSON object), got {type(content).__name__}.")
    text = json.dumps(_json_value(content), indent=indent, allow_nan=False)
    with atomic_write(path, "w") as f:
        f.write(text + "\n")
    return Path(path)


_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".pkl", ".npz", ".npy", ".png")
_SUBJECT_NUMBER = re.compile(r"\d{2,}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def file_stem(filename: str | os.PathLike) -> str:
    """Name identifying an image file: its stem, prefixed by its folder when the stem alone is ambiguous.

    The image suffix (``.nii.gz``, ``.nii``, ``.mha``, ``.mhd``, ``.nrrd``, ``.pkl``, ``.npz``, ``.npy``,
    ``.png``) is stripped. A stem without a number of at least two digits (a generic name such as ``T1``,
    ``brain`` or ``aligned_norm``, shared by every subject) is prefixed by the parent folder name:
    ``sub-001/T1.nii.gz -> sub-001_T1``, ``OASIS_0001_0000.nii.gz -> OASIS_0001_0000``. Characters other than
    letters, digits and ``._+-`` become ``_``.

    Args:
        filename: path of the image file.

    Returns:
        the identifier.
    """
    path = Path(str(filename))
    name = path.name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    parent = path.parent.name
    if parent and not _SUBJECT_NUMBER.search(name):
        name = f"{parent}_{name}"
    return _UNSAFE.sub("_", name).strip("_") or "image"


def pair_id_from_filenames(moving: str | os.PathLike, fixed: str | os.PathLike) -> str:
    """``<moving>_to_<fixed>`` from the two file names, each shortened by :func:`file_stem`."""
    return f"{file_stem(moving)}_to_{file_stem(fixed)}"


def describe_source(image: torch.Tensor) -> str:
    """Return ``" (file 'a.nii.gz')"`` when ``image`` is a MONAI ``MetaTensor`` that knows its file, else ``""``."""
    meta = getattr(image, "meta", None)
    if not isinstance(meta, dict):
        return ""
    name = meta.get("filename_or_obj")
    if isinstance(name, (list, tuple)):
        name = ", ".join(str(n) for n in name)
    return f" (file {str(name)!r})" if name else ""
