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
"""Per-pair SPR optimisation against the network alone and ANTs SyN, on real brains, on the same working grid.

For each pair of ``bench_pair_registration.PAIRS`` (ICBM 2009a -> FSL MNI152; ICBM 2009a -> the ROBEX subject,
masked), the pipeline's own preprocessing and affine pre-alignment (:func:`svreg_monai.apps.register_pair` stages)
give a moving and a fixed image on the fixed image's 2 mm working grid, with CSF/GM/WM k-means labels. Every method
then registers that same pair, and its displacement warps the moving labels (nearest neighbour) on that grid:

- ``affine only``: the baseline every method starts from;
- ``network``: the shipped TM-SPR alone;
- ``optimise(net)``: :func:`svreg_monai.registration.optimize_spr` from the network's velocity (λ from 0.5: the
  shipped network's λ is about 1 everywhere, and a start in the sigmoid's flat end barely moves);
- ``optimise(id)``: the same from identity (no trained model);
- ``uniform λ=1`` and ``uniform λ=median``: the ablation, from identity, λ held uniform at 1 and at the median of
  the learned λ inside the brain (the same overall strength), same budget and λ_max;
- ``SyN ...``: ANTs ``SyNOnly`` (antspyx, run in its own virtual environment given by ``--ants_python``) at its
  defaults (Mattes, 40x20x0), at 100x70x50, and with CC (radius 2) at 100x70x50.

Reported per method: mean Dice (CSF/GM/WM, inside the fixed brain), NDV and SDlogJ of the displacement (inside the
brain; ANTs' field converted to working-grid voxels), the IQR of λ inside the brain, and wall time of the
registration alone (threads: ``--threads``, for torch and ANTs alike).

Run::

    python benchmarks/bench_instance_optimisation.py --data DIR --ants_python antsenv/bin/python --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_affine_prealignment import tissue_labels
from bench_pair_registration import PAIRS, shipped_network, write_results

from svreg_monai.apps.pair_registration import _normalise, _working_grid, load_checked_image
from svreg_monai.blocks.warping import warp_image
from svreg_monai.metrics.functional import non_diffeomorphic_measures, sd_log_jacobian
from svreg_monai.registration import affine_register, optimize_spr
from svreg_monai.utils.world import resample_through

ANTS_SCRIPT = r"""
import json, sys, time
import ants, numpy as np
args = json.loads(sys.argv[1])
fixed, moving = ants.image_read(args["fixed"]), ants.image_read(args["moving"])
out = {}
for name, kw in args["settings"].items():
    tic = time.perf_counter()
    reg = ants.registration(fixed, moving, type_of_transform="SyNOnly", **kw)
    seconds = time.perf_counter() - tic
    field = ants.image_read(reg["fwdtransforms"][0]).numpy()  # (X, Y, Z, 3) physical LPS mm displacement
    np.save(args["prefix"] + name + ".npy", field)
    out[name] = seconds
print(json.dumps(out))
"""

SETTINGS = {
    "SyN default": {},
    "SyN 100x70x50": {"reg_iterations": [100, 70, 50]},
    "SyN CC 100x70x50": {"reg_iterations": [100, 70, 50], "syn_metric": "CC", "syn_sampling": 2},
}


def prepare(data: Path, pair: str, root: Path) -> dict[str, Any]:
    """The pair on the working grid after the pipeline's affine, as tensors and NIfTI files (RAS, 2 mm)."""
    moving_rel, fixed_rel, mask_rel = PAIRS[pair]
    mov = load_checked_image(data / moving_rel, "moving image")
    fix = load_checked_image(data / fixed_rel, "fixed image")
    fmask = None if mask_rel is None else load_checked_image(data / mask_rel, "fixed mask", "mask")
    mov_lab = tissue_labels(mov[0].numpy(), mov[0].numpy() > 0)
    fbrain = (fix[0].numpy() > 0) if fmask is None else (fmask[0].numpy() > 0)
    fix_lab = tissue_labels(fix[0].numpy(), fbrain)
    mov_n, fix_n = _normalise(mov, None, (0.5, 99.5)), _normalise(fix, fmask, (0.5, 99.5))
    fix_w = _working_grid(fix_n, 2.0, 32)
    a_m, a_f, a_w = (np.asarray(x.affine, dtype=np.float64) for x in (mov, fix, fix_w))
    shape_w = tuple(fix_w.shape[1:])
    matrix = affine_register(mov_n, a_m, fix_w, a_w).matrix
    moving_w = resample_through(mov_n, a_m, a_w, shape_w, matrix=matrix)
    mlab_w = resample_through(torch.from_numpy(mov_lab[None].astype(np.float32)), a_m, a_w, shape_w, matrix=matrix,
                              mode="nearest")  # fmt: skip
    flab_w = resample_through(torch.from_numpy(fix_lab[None].astype(np.float32)), a_f, a_w, shape_w, mode="nearest")
    files = {}
    for name, arr in (("moving", moving_w), ("fixed", fix_w.as_tensor())):
        files[name] = str(root / f"{pair.replace('>', '')}_{name}.nii.gz")
        nib.save(nib.Nifti1Image(arr[0].numpy().astype(np.float32), a_w), files[name])
    return {
        "moving": moving_w[None], "fixed": fix_w.as_tensor()[None].float(), "moving_label": mlab_w[None],
        "fixed_label": flab_w[0].round().long(), "brain": flab_w[0] > 0, "affine": a_w, "files": files,
    }  # fmt: skip


def evaluate(p: dict[str, Any], ddf: torch.Tensor, weight: torch.Tensor | None, seconds: float) -> dict[str, Any]:
    warped = warp_image(p["moving_label"], ddf, mode="nearest")[0, 0].round().long()
    brain = p["brain"]
    dice = []
    for c in (1, 2, 3):
        a, b = (warped == c) & brain, (p["fixed_label"] == c) & brain
        dice.append(2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0))
    mask = brain[None, None]
    nd = non_diffeomorphic_measures(ddf.double(), mask=mask)
    row = {
        "dice": round(float(np.mean(dice)), 4),
        "dice_csf_gm_wm": [round(d, 4) for d in dice],
        "ndv_percent": round(float(nd.ndv), 4),
        "sdlogj": round(float(sd_log_jacobian(ddf.double(), mask=mask)), 4),
        "time_s": round(seconds, 1),
    }
    if weight is not None:
        w = weight[0, 0][brain]
        q = torch.quantile(w[:: max(1, w.numel() // 500_000)], torch.tensor([0.25, 0.5, 0.75]))
        row["lambda_median"], row["lambda_iqr"] = round(float(q[1]), 4), round(float(q[2] - q[0]), 4)
    return row


def ants_to_ddf(field: np.ndarray, affine: np.ndarray) -> torch.Tensor:
    """ANTs' (X, Y, Z, 3) LPS-mm displacement on our RAS grid -> (1, 3, X, Y, Z) displacement in voxels."""
    ras = field.copy()
    ras[..., :2] *= -1
    inv = np.linalg.inv(affine[:3, :3])
    vox = np.einsum("ij,xyzj->ixyz", inv, ras)
    return torch.from_numpy(vox[None].astype(np.float32))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with the unpacked archives")
    parser.add_argument("--ants_python", type=Path, default=None, help="python of a venv with antspyx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs=2, default=[40, 20])
    parser.add_argument("--lambda_max", type=float, default=5.0)
    parser.add_argument("--prior_param", type=float, default=1.01)
    parser.add_argument("--field_scale", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/instance_optimisation.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    network = shipped_network()
    options = {"levels": (2, 1), "steps": tuple(args.steps), "learning_rate": 0.05, "field_scale": args.field_scale,
               "lambda_max": args.lambda_max, "prior_param": args.prior_param}  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in PAIRS:
            p = prepare(args.data, pair, Path(tmp))
            m, f = p["moving"], p["fixed"]
            rows.append(
                {"pair": pair, "method": "affine only", **evaluate(p, torch.zeros(1, 3, *m.shape[2:]), None, 0.0)}
            )
            tic = time.perf_counter()
            with torch.no_grad():
                out = network(m, f)
            t_net = time.perf_counter() - tic
            rows.append({"pair": pair, "method": "network", **evaluate(p, out.ddf, out.weight, t_net)})
            runs = {
                "optimise(net)": {"initial_velocity": out.velocity},  # the network's λ is ~1 everywhere: not used
                "optimise(id)": {},
                "uniform λ=1 (id)": {"learn_weight": False, "initial_weight": 1.0},
                "uniform λ=median (id)": {"learn_weight": False},
            }
            median = 1.0
            for name, extra in runs.items():
                if name == "uniform λ=median (id)":
                    extra["initial_weight"] = median  # the learned λ's median inside the brain: same overall strength
                tic = time.perf_counter()
                res = optimize_spr(m, f, **options, **extra)
                if name == "optimise(id)":
                    median = float(res.weight[0, 0][p["brain"]].median())
                seconds = time.perf_counter() - tic + (t_net if name == "optimise(net)" else 0.0)
                rows.append({"pair": pair, "method": name, **evaluate(p, res.ddf, res.weight, seconds)})
                print(json.dumps(rows[-1]), flush=True)
            if args.ants_python is not None:
                payload = {"fixed": p["files"]["fixed"], "moving": p["files"]["moving"], "settings": SETTINGS,
                           "prefix": str(Path(tmp) / "ants_")}  # fmt: skip
                env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(args.threads)}
                proc = subprocess.run([str(args.ants_python), "-c", ANTS_SCRIPT, json.dumps(payload)], env=env,
                                      capture_output=True, text=True, check=True)  # fmt: skip
                times = json.loads(proc.stdout.strip().splitlines()[-1])
                for name, seconds in times.items():
                    ddf = ants_to_ddf(np.load(str(Path(tmp) / f"ants_{name}.npy")), p["affine"])
                    rows.append({"pair": pair, "method": name, **evaluate(p, ddf, None, seconds)})
                    print(json.dumps(rows[-1]), flush=True)
    keys = ["pair", "method", "dice", "dice_csf_gm_wm", "ndv_percent", "sdlogj", "lambda_median", "lambda_iqr",
            "time_s"]  # fmt: skip
    description = (
        f"optimise options {options}; {args.threads} threads; same 2 mm working grid and affine for every method."
    )
    write_results(rows, keys, "Per-pair optimisation on real brains", description, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
