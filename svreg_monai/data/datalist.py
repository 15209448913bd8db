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
"""Registration data sets of NIfTI/MHA/... files described by a JSON datalist (MONAI decathlon style).

**Atlas-to-subject** registration: one ``"atlas"`` entry (the moving image of every pair) and, per split, the
subjects (the fixed images); labels are optional::

    {
        "atlas": {"image": "atlas/T1.nii.gz", "label": "atlas/seg.nii.gz"},
        "training": [
            {"image": "sub-001/T1.nii.gz", "label": "sub-001/seg.nii.gz"},
            {"image": "sub-002/T1.nii.gz", "label": "sub-002/seg.nii.gz"}
        ],
        "validation": [{"image": "sub-003/T1.nii.gz", "label": "sub-003/seg.nii.gz"}],
        "test": [{"image": "sub-004/T1.nii.gz", "label": "sub-004/seg.nii.gz"}]
    }

**Pairwise** registration (e.g. intra-subject, longitudinal): every item names its pair explicitly and no
``"atlas"`` is needed; ``"moving_label"`` / ``"fixed_label"`` are optional::

    {
        "training": [
            {"moving": "sub-001/ses-1/T1.nii.gz", "fixed": "sub-001/ses-2/T1.nii.gz",
             "moving_label": "sub-001/ses-1/seg.nii.gz", "fixed_label": "sub-001/ses-2/seg.nii.gz"}
        ]
    }

:func:`load_registration_datalist` turns either into items with the keys of
:class:`~svreg_monai.utils.RegistrationKeys` (``"moving"``, ``"fixed"``, ``"moving_label"``, ``"fixed_label"``),
holding absolute file paths for ``monai.transforms.LoadImaged(keys=..., ensure_channel_first=True)``. Relative paths
resolve against ``base_dir`` (default: the folder of the datalist file). Item keys other than the ones above are
passed through unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svreg_monai.utils import RegistrationKeys
from svreg_monai.utils.io import atomic_write
from svreg_monai.utils.validation import check_option

__all__ = ["DATALIST_MODES", "load_registration_datalist", "write_registration_datalist"]

DATALIST_MODES = ("auto", "atlas", "pairwise")

_PAIR_KEYS = (RegistrationKeys.MOVING, RegistrationKeys.FIXED)
_PAIR_LABEL_KEYS = (RegistrationKeys.MOVING_LABEL, RegistrationKeys.FIXED_LABEL)


def _resolve(path: Any, base: Path, where: str, key: str) -> str:
    """Absolute path of ``path`` (relative to ``base``); raise if it is not a string or the file does not exist."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: {key!r} must be a non-empty file path string, got {path!r}.")
    full = Path(os.path.expanduser(path))
    if not full.is_absolute():
        full = base / full
    full = Path(os.path.normpath(full))
    if not full.exists():
        raise FileNotFoundError(f"{where}: {key} file '{full}' does not exist (given as {path!r}).")
    return str(full)


def _atlas_entry(entry: Any, where: str) -> dict[str, Any]:
    """Normalise an atlas-mode entry (``{"image": ..., "label": ...}`` or an image path string) to a dict."""
    if isinstance(entry, str):
        return {"image": entry}
    if not isinstance(entry, Mapping) or "image" not in entry:
        raise ValueError(
            f"{where} must be an image path or a dict with an 'image' (and optional 'label'), got {entry!r}."
        )
    return dict(entry)


def _check_consistent_labels(items: list[dict[str, Any]], keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        has = [key in item for item in items]
        if any(has) and not all(has):
            missing = [i for i, h in enumerate(has) if not h]
            raise ValueError(
                f"{where}: {key!r} is given for some items but not for items {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}; give labels for all items of a split or for none."
            )


def load_registration_datalist(
    datalist_file: str | os.PathLike,
    data_list_key: str = "training",
    base_dir: str | os.PathLike | None = None,
    mode: str = "auto",
) -> list[dict[str, Any]]:
    """Read one split of a registration datalist (format in the module docstring) and check its files exist.

    Args:
        datalist_file: the JSON datalist.
        data_list_key: the split, e.g. ``"training"``, ``"validation"`` or ``"test"``.
        base_dir: folder that relative paths resolve against; default: the folder of ``datalist_file``.
        mode: ``"atlas"``, ``"pairwise"``, or ``"auto"``: pairwise if the items give ``"moving"``/``"fixed"``,
            atlas otherwise.

    Returns:
        Items ``{"moving": ..., "fixed": ..., ["moving_label": ..., "fixed_label": ...]}`` with absolute paths. In
        atlas mode ``"moving"``/``"moving_label"`` are the atlas image/label and ``"fixed"``/``"fixed_label"`` the
        item's ``"image"``/``"label"``; each label key is present if the atlas/the items give it.

    Raises:
        FileNotFoundError: if the datalist file or a file it references does not exist (names the item and path).
        ValueError: for invalid JSON, a missing key or empty split, atlas mode without ``"atlas"``, items mixing the
            two formats, labels given for some items of the split but not for others, or an unknown ``mode``.
    """
    check_option(mode, DATALIST_MODES, "mode")
    datalist_path = Path(datalist_file)
    if not datalist_path.is_file():
        raise FileNotFoundError(f"datalist file '{datalist_path}' does not exist.")
    try:
        content = json.loads(datalist_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"datalist file '{datalist_path}' is not valid JSON: {e}") from e
    if not isinstance(content, dict):
        raise ValueError(f"datalist file '{datalist_path}' must hold a JSON object, got {type(content).__name__}.")
    if data_list_key not in content:
        raise ValueError(
            f"key {data_list_key!r} not found in datalist file '{datalist_path}' (keys: {sorted(content)})."
        )
    raw_items = content[data_list_key]
    if not isinstance(raw_items, list) or not raw_items:
        raise ValueError(
            f"split {data_list_key!r} of datalist file '{datalist_path}' must be a non-empty list of items, "
            f"got {raw_items!r}."
        )
    base = Path(base_dir) if base_dir is not None else datalist_path.parent
    base = base.expanduser().absolute()
    split = f"datalist '{datalist_path}', split {data_list_key!r}"

    is_pair = [isinstance(item, Mapping) and any(k in item for k in _PAIR_KEYS) for item in raw_items]
    if mode == "auto":
        if any(is_pair) and not all(is_pair):
            raise ValueError(
                f"{split}: items {[i for i, p in enumerate(is_pair) if not p][:10]} have no 'moving'/'fixed' while "
                "others do; use one format per split (pairwise items with 'moving'/'fixed', or atlas items with "
                "'image')."
            )
        mode = "pairwise" if all(is_pair) else "atlas"

    items: list[dict[str, Any]] = []
    if mode == "pairwise":
        for i, item in enumerate(raw_items):
            where = f"{split}, item {i}"
            if not isinstance(item, Mapping) or any(k not in item for k in _PAIR_KEYS):
                raise ValueError(f"{where}: a pairwise item must be a dict with 'moving' and 'fixed', got {item!r}.")
            out = dict(item)
            for key in (*_PAIR_KEYS, *_PAIR_LABEL_KEYS):
                if key in out:
                    out[key] = _resolve(out[key], base, where, key)
            items.append(out)
        _check_consistent_labels(items, _PAIR_LABEL_KEYS, split)
        return items

    if "atlas" not in content:
        raise ValueError(
            f"datalist file '{datalist_path}' has no 'atlas' entry, which atlas-to-subject mode needs (the moving "
            'image of every pair); add "atlas": {"image": ..., "label": ...}, or give pairwise items with '
            "'moving'/'fixed'."
        )
    atlas_where = f"datalist '{datalist_path}', atlas"
    atlas = _atlas_entry(content["atlas"], atlas_where)
    atlas_image = _resolve(atlas["image"], base, atlas_where, "image")
    atlas_label = _resolve(atlas["label"], base, atlas_where, "label") if "label" in atlas else None
    entries = [_atlas_entry(item, f"{split}, item {i}") for i, item in enumerate(raw_items)]
    _check_consistent_labels(entries, ("label",), split)
    for i, entry in enumerate(entries):
        where = f"{split}, item {i}"
        out = {k: v for k, v in entry.items() if k not in ("image", "label")}
        out[RegistrationKeys.MOVING] = atlas_image
        out[RegistrationKeys.FIXED] = _resolve(entry["image"], base, where, "image")
        if atlas_label is not None:
            out[RegistrationKeys.MOVING_LABEL] = atlas_label
        if "label" in entry:
            out[RegistrationKeys.FIXED_LABEL] = _resolve(entry["label"], base, where, "label")
        items.append(out)
    return items


def write_registration_datalist(path: str | os.PathLike, datalist: Mapping[str, Any]) -> Path:
    """Write a datalist (format in the module docstring) as indented JSON, atomically.

    Args:
        path: destination ``.json`` file; its folder is created if needed.
        datalist: the datalist, a JSON-serialisable mapping.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``datalist`` is not a mapping or not JSON-serialisable (nothing is written then).
    """
    if not isinstance(datalist, Mapping):
        raise ValueError(f"datalist must be a mapping (a JSON object), got {type(datalist).__name__}.")
    try:
        text = json.dumps(dict(datalist), indent=2) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"datalist for '{path}' is not JSON-serialisable: {e}") from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        f.write(text)
    return path
