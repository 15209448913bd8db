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
"""Tools for distributing the package's MONAI bundles in the model-zoo format.

``pack`` writes a bundle folder into ``<name>_v<version>.zip`` (``version`` from ``configs/metadata.json``) with
a single top folder ``<name>/``, the layout that ``python -m monai.bundle download --url ...`` extracts and that
the MONAI model zoo hosts. Run outputs and caches are left out (:data:`EXCLUDE_PATTERNS`); the shipped weights
(``models/model.pt``) are included. Command line::

    python -m svreg_monai.apps.bundle_tools pack bundles/brain_mri_svreg --output dist/
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import re
import sys
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from svreg_monai.networks.blocks.swin_encoder import window_size_from_table
from svreg_monai.utils.io import atomic_path

__all__ = [
    "EXCLUDE_PATTERNS",
    "REQUIRED_FILES",
    "bundle_files",
    "bundle_version",
    "checkpoint_window_size",
    "main",
    "pack_bundle",
]

logger = logging.getLogger(__name__)

#: ``fnmatch`` patterns (``*`` also matches ``/``) of the paths, relative to the bundle folder and with ``/``
#: separators, that are not packed: run outputs (data sets, logs, evaluation results, epoch checkpoints) and
#: caches. A folder is left out with everything in it when its path matches.
EXCLUDE_PATTERNS: tuple[str, ...] = (
    "data",
    "logs",
    "eval",
    "runs",
    "models/*checkpoint_epoch=*.pt",
    "*__pycache__",
    "*.pyc",
    "*.pyo",
    "*.pytest_cache",
    "*.ruff_cache",
    "*.ipynb_checkpoints",
    "*.DS_Store",
    "*.tmp-*",
)

#: files every packed bundle must have (model-zoo layout).
REQUIRED_FILES: tuple[str, ...] = ("configs/metadata.json", "docs/README.md", "LICENSE")

_FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: archives do not depend on file times
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+-]*$")


def _excluded(relative: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(relative, p) for p in patterns)


def checkpoint_window_size(path: str | os.PathLike, default: Sequence[int]) -> list[int]:
    """The attention window a TM-SPR checkpoint was trained with, for the inference configs.

    The window is part of the trained weights (its relative-position bias tables), not of the input size: a model
    trained at ``image_size`` 96 (window 3) keeps window 3 when it registers 128^3 images. This reads the first
    ``relative_position_bias_table`` of the checkpoint (a plain or ``net.``-prefixed state dict, or a dict with a
    ``"network"``/``"model"`` entry) and returns the window that fits it, ``default`` when that fits (see
    :func:`~svreg_monai.networks.blocks.swin_encoder.window_size_from_table`).

    The table's size does not tell the axes apart: a non-cubic window (e.g. the IXI model's 5 x 6 x 7) is returned
    as ``default`` whenever ``default`` is one of its permutations, so when the axes of ``image_size`` are reordered
    against training, give ``window_size`` explicitly. Loading weights of a window with another table size stops
    with an error naming the trained window (``WindowAttention``).

    Args:
        path: the checkpoint file. When it does not exist, cannot be read or holds no bias table (a config parsed
            outside its bundle folder, say), ``default`` is returned (with a warning for the last two); a
            checkpoint loader of the config then reports the file itself.
        default: the window to use without a checkpoint (``image_size // 32``); its length is the number of
            spatial dimensions.

    Raises:
        ValueError: when no window fits the checkpoint's bias table.
    """
    default = [int(w) for w in default]
    if not os.path.isfile(path):
        return default
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        logger.warning(f"{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: {e}); window {default}.")
        return default
    for key in ("network", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    tables = (
        [v for k, v in state.items() if k.endswith("relative_position_bias_table")] if isinstance(state, dict) else []
    )
    if not tables:
        logger.warning(f"{path} holds no relative_position_bias_table (not a TM-SPR checkpoint?); window {default}.")
        return default
    return list(window_size_from_table(int(tables[0].shape[0]), len(default), preferred=default))


def bundle_files(bundle_dir: str | os.PathLike, exclude: Sequence[str] = EXCLUDE_PATTERNS) -> list[Path]:
    """The files of a bundle that :func:`pack_bundle` packs, as sorted paths relative to ``bundle_dir``.

    Args:
        bundle_dir: the bundle folder.
        exclude: patterns of the paths left out (see :data:`EXCLUDE_PATTERNS`).

    Raises:
        FileNotFoundError: when ``bundle_dir`` is not a folder.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"bundle folder '{root}' does not exist.")
    files: list[Path] = []
    for current, dirs, names in os.walk(root, followlinks=False):
        base = Path(current).relative_to(root)
        dirs[:] = sorted(d for d in dirs if not _excluded((base / d).as_posix(), exclude))
        for name in names:
            rel = base / name
            if not _excluded(rel.as_posix(), exclude) and (root / rel).is_file():
                files.append(rel)
    return sorted(files, key=lambda p: p.as_posix())


def bundle_version(bundle_dir: str | os.PathLike) -> str:
    """The ``version`` of ``<bundle_dir>/configs/metadata.json``, checked to be listed in its ``changelog``.

    Raises:
        FileNotFoundError: when the metadata file does not exist.
        ValueError: when it is not valid JSON, or its ``version`` is missing, not a plain version string, or not a
            key of ``changelog``.
    """
    meta_file = Path(bundle_dir) / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"bundle metadata '{meta_file}' does not exist.")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"bundle metadata '{meta_file}' is not valid JSON: {e}") from e
    version = meta.get("version") if isinstance(meta, dict) else None
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ValueError(f"'version' of '{meta_file}' must be a version string such as '0.1.0', got {version!r}.")
    changelog = meta.get("changelog")
    if not isinstance(changelog, dict) or version not in changelog:
        raise ValueError(f"version {version!r} of '{meta_file}' has no entry in its 'changelog'.")
    return version


def pack_bundle(
    bundle_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    name: str | None = None,
    exclude: Sequence[str] = EXCLUDE_PATTERNS,
) -> Path:
    """Write ``<output_dir>/<name>_v<version>.zip`` of a bundle folder, atomically.

    The archive holds the files of :func:`bundle_files` under one top folder ``<name>/``, in sorted order with fixed
    timestamps (the same files give the same archive). It is written to a temporary file in ``output_dir`` and
    renamed into place, so an interrupted run leaves no partial zip.

    Args:
        bundle_dir: the bundle folder (with ``configs/metadata.json``, ``docs/README.md``, ``LICENSE``).
        output_dir: folder of the archive, created if missing.
        name: bundle name (top folder and file name); default: the name of ``bundle_dir``.
        exclude: patterns of the paths left out (see :data:`EXCLUDE_PATTERNS`).

    Returns:
        the path of the archive.

    Raises:
        FileNotFoundError: when ``bundle_dir`` or one of :data:`REQUIRED_FILES` is missing.
        ValueError: for an invalid ``name`` or metadata version (see :func:`bundle_version`).
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"bundle folder '{root}' does not exist.")
    name = root.resolve().name if name is None else name
    if not name or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        raise ValueError(f"bundle name must be letters, digits, '_', '.' or '-', got {name!r}.")
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"bundle folder '{root}' lacks the model-zoo files {missing}.")
    version = bundle_version(root)
    files = bundle_files(root, exclude)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}_v{version}.zip"
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for directory in sorted({p.as_posix() for f in files for p in f.parents if p != Path(".")}):
            info = zipfile.ZipInfo(f"{name}/{directory}/", date_time=_FIXED_DATE)
            info.external_attr = (0o40755 << 16) | 0x10
            archive.writestr(info, b"")
        for rel in files:
            info = zipfile.ZipInfo(f"{name}/{rel.as_posix()}", date_time=_FIXED_DATE)
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(root / rel, "rb") as src, archive.open(info, "w") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    logger.info("packed %d files of '%s' into '%s'.", len(files), root, target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m svreg_monai.apps.bundle_tools pack <bundle_dir> --output <dir> [--name NAME]``."""
    parser = argparse.ArgumentParser(
        prog="python -m svreg_monai.apps.bundle_tools", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("pack", help="write <name>_v<version>.zip of a bundle folder")
    pack.add_argument("bundle_dir", help="the bundle folder")
    pack.add_argument("--output", "-o", default=".", help="folder of the archive (default: the current folder)")
    pack.add_argument("--name", default=None, help="bundle name (default: the name of the bundle folder)")
    pack.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="another fnmatch pattern of bundle-relative paths to leave out (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        path = pack_bundle(args.bundle_dir, args.output, name=args.name, exclude=(*EXCLUDE_PATTERNS, *args.exclude))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
