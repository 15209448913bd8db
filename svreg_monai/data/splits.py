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
"""One entry point from a bundle's data settings to the items of a split."""

from __future__ import annotations

import os
from pathlib import Path

from .datalist import load_registration_datalist
from .demo import DATASET_SOURCES
from .ixi import ixi_datalist

__all__ = ["SPLIT_NAMES", "load_split"]

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
        source: ``"demo"`` or ``"datalist"`` (a JSON datalist, see :func:`load_registration_datalist`) or
            ``"ixi"`` (the reference's preprocessed pickles, see :func:`ixi_datalist`).
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
    if source not in DATASET_SOURCES:
        raise ValueError(f"source must be one of {DATASET_SOURCES}, got {source!r}.")
    datalist_file = Path(dataset_dir) / "datalist.json" if datalist_file is None else Path(datalist_file)
    return load_registration_datalist(datalist_file, data_list_key=split, mode=mode)
