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
import copy
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
from svreg_monai.flow.warping import warp_image
from svreg_monai.losses.functional_similarity import local_normalized_cross_correlation_loss
from svreg_monai.losses.regularization import SpatiallyVaryingRegularizationLoss
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

ELASTIX_SCRIPT = r"""
import json, sys, time
import itk, numpy as np
args = json.loads(sys.argv[1])
fixed, moving = itk.imread(args["fixed"], itk.F), itk.imread(args["moving"], itk.F)
out = {}
for name, kind in args["settings"].items():
    po = itk.ParameterObject.New()
    po.AddParameterMap(po.GetDefaultParameterMap(kind))
    tic = time.perf_counter()
    _, params = itk.elastix_registration_method(fixed, moving, parameter_object=po, log_to_console=False)
    seconds = time.perf_counter() - tic
    field = itk.transformix_deformation_field(moving, params)  # (Z, Y, X, 3) physical LPS mm displacement
    np.save(args["prefix"] + name + ".npy", np.transpose(itk.array_from_image(field), (2, 1, 0, 3)))
    out[name] = seconds
print(json.dumps(out))
"""

ELASTIX_SETTINGS = {"elastix B-spline": "bspline"}

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


def finetune(network: torch.nn.Module, m: torch.Tensor, f: torch.Tensor, seconds: float, options: dict[str, Any]):
    """Fine-tune a copy of ``network`` on this pair (Adam, lr 1e-4, eval mode, the optimiser's objective) for
    ``seconds`` of wall time; returns (output, steps). The other parameterisation the issue asks to measure."""
    net = copy.deepcopy(network).eval()
    regulariser = SpatiallyVaryingRegularizationLoss(lambda_max=options["lambda_max"], alpha=options["prior_param"])
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-4)
    tic, steps = time.perf_counter(), 0
    while time.perf_counter() - tic < seconds:
        optimiser.zero_grad()
        out = net(m, f)
        sim = local_normalized_cross_correlation_loss(warp_image(m, out.ddf), f, kernel_size=5)
        (sim + regulariser(out.ddf, out.weight).total).backward()
        optimiser.step()
        steps += 1
    with torch.no_grad():
        return net(m, f), steps


def run_external(python: Path, script: str, payload: dict[str, Any], threads: int) -> dict[str, float]:
    """Run ``script`` (ANTs or elastix) in its own interpreter, in the folder of ``payload["prefix"]`` (transformix
    writes ``deformationField.nii`` into its working folder); returns {setting: seconds}."""
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads)}
    proc = subprocess.run([str(python), "-c", script, json.dumps(payload)], env=env, capture_output=True, text=True,
                          check=True, cwd=str(Path(payload["prefix"]).parent))  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with the unpacked archives")
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--ants_python", type=Path, default=None, help="python of a venv with antspyx")
    parser.add_argument("--elastix_python", type=Path, default=None, help="python of a venv with itk-elastix")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs=2, default=[40, 20])
    parser.add_argument("--budgets", nargs="*", default=["10,5", "20,10", "80,40"],
                        help="further step budgets of optimise(net), 'coarse,fine'")  # fmt: skip
    parser.add_argument("--tolerance", type=float, default=1e-3, help="stopping-rule row (steps 200,100)")
    parser.add_argument("--lambda_max", type=float, default=5.0)
    parser.add_argument("--prior_param", type=float, default=1.01)
    parser.add_argument("--field_scale", type=int, default=2)
    parser.add_argument("--ants_settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of other pairs already in --output's JSON (a run in pieces)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/instance_optimisation.md"))
    args = parser.parse_args(argv)
    kept: list[dict[str, Any]] = []
    if args.append and args.output.with_suffix(".json").is_file():
        kept = [r for r in json.loads(args.output.with_suffix(".json").read_text()) if r["pair"] not in args.pairs]
    torch.set_num_threads(args.threads)
    network = shipped_network()
    options = {"levels": (2, 1), "steps": tuple(args.steps), "learning_rate": 0.05, "field_scale": args.field_scale,
               "lambda_max": args.lambda_max, "prior_param": args.prior_param}  # fmt: skip
    rows = []

    def add(pair: str, method: str, p: dict[str, Any], ddf, weight, seconds: float, **extra: Any) -> None:
        rows.append({"pair": pair, "method": method, **evaluate(p, ddf, weight, seconds), **extra})
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs:
            p = prepare(args.data, pair, Path(tmp))
            m, f = p["moving"], p["fixed"]
            add(pair, "affine only", p, torch.zeros(1, 3, *m.shape[2:]), None, 0.0)
            tic = time.perf_counter()
            with torch.no_grad():
                out = network(m, f)
            t_net = time.perf_counter() - tic
            add(pair, "network", p, out.ddf, out.weight, t_net)
            # the network's λ is ~1 everywhere: only its velocity is used as a start
            runs: dict[str, dict[str, Any]] = {"optimise(net)": {"initial_velocity": out.velocity}}
            for budget in args.budgets:
                coarse, fine = (int(x) for x in budget.split(","))
                runs[f"optimise(net) steps {coarse}+{fine}"] = {
                    "initial_velocity": out.velocity,
                    "steps": (coarse, fine),
                }
            if args.tolerance > 0:
                runs[f"optimise(net) stop tol {args.tolerance:g}"] = {
                    "initial_velocity": out.velocity, "steps": (200, 100), "tolerance": args.tolerance,
                }  # fmt: skip
            runs["optimise(net) bf16 autocast"] = {"initial_velocity": out.velocity, "bf16": True}
            runs["optimise(id)"] = {}
            runs["uniform λ=1 (id)"] = {"learn_weight": False, "initial_weight": 1.0}
            runs["uniform λ=median (id)"] = {"learn_weight": False}
            median, t_default = 1.0, 0.0
            for name, extra in runs.items():
                extra = dict(extra)
                bf16 = extra.pop("bf16", False)
                if name == "uniform λ=median (id)":
                    extra["initial_weight"] = median  # the learned λ's median inside the brain: same overall strength
                tic = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    res = optimize_spr(m, f, **{**options, **extra})
                seconds = time.perf_counter() - tic + (t_net if "initial_velocity" in extra else 0.0)
                if name == "optimise(id)":
                    median = float(res.weight[0, 0][p["brain"]].median())
                if name == "optimise(net)":
                    t_default = seconds
                add(pair, name, p, res.ddf, res.weight, seconds, steps=len(res.history))
            tic = time.perf_counter()
            tuned, ft_steps = finetune(network, m, f, t_default - t_net, options)
            add(pair, "fine-tune(net), same time", p, tuned.ddf, tuned.weight, time.perf_counter() - tic + t_net,
                steps=ft_steps)  # fmt: skip
            for python, script, settings, prefix in (
                (args.ants_python, ANTS_SCRIPT, {k: SETTINGS[k] for k in args.ants_settings}, "ants_"),
                (args.elastix_python, ELASTIX_SCRIPT, ELASTIX_SETTINGS, "elastix_"),
            ):
                if python is None:
                    continue
                payload = {"fixed": p["files"]["fixed"], "moving": p["files"]["moving"], "settings": settings,
                           "prefix": str(Path(tmp) / prefix)}  # fmt: skip
                for name, seconds in run_external(python, script, payload, args.threads).items():
                    add(pair, name, p, ants_to_ddf(np.load(str(Path(tmp) / f"{prefix}{name}.npy")), p["affine"]),
                        None, seconds)  # fmt: skip
    keys = ["pair", "method", "dice", "dice_csf_gm_wm", "ndv_percent", "sdlogj", "lambda_median", "lambda_iqr",
            "steps", "time_s"]  # fmt: skip
    description = (
        f"optimise options {options}; {args.threads} threads; same 2 mm working grid and affine for every method; "
        "`steps`: optimiser steps taken (fine-tune: network updates)."
    )
    if kept:
        description += f" Rows of {sorted(dict.fromkeys(r['pair'] for r in kept))} kept from an earlier run (--append)."
    rows = kept + rows
    write_results(rows, keys, "Per-pair optimisation on real brains", description, args.output)
    write_summary(rows, args.output.with_name(args.output.stem + "_summary.md"))
    return 0


def write_summary(rows: list[dict[str, Any]], output: Path) -> None:
    """Per pair: the Dice of SyN 100x70x50 and SyN-CC, and the fastest optimise(net) run reaching each (time ratio)."""
    lines = [
        "| pair | target | target Dice | target s | fastest optimise(net) reaching it | its Dice | its s | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pair in dict.fromkeys(r["pair"] for r in rows):
        mine = [r for r in rows if r["pair"] == pair and r["method"].startswith("optimise(net)")
                and "bf16" not in r["method"]]  # fmt: skip
        for target in ("SyN 100x70x50", "SyN CC 100x70x50"):
            ref = next((r for r in rows if r["pair"] == pair and r["method"] == target), None)
            if ref is None:
                continue
            ok = sorted(
                (r for r in mine if r["dice"] >= ref["dice"] and r["ndv_percent"] < 0.1), key=lambda r: r["time_s"]
            )
            best = ok[0] if ok else None
            lines.append(
                f"| {pair} | {target} | {ref['dice']} | {ref['time_s']} | {best['method'] if best else 'none'} | "
                f"{best['dice'] if best else ''} | {best['time_s'] if best else ''} | "
                f"{round(best['time_s'] / ref['time_s'], 3) if best else ''} |"
            )
    text = "# Time to reach ANTs SyN's Dice (NDV < 0.1 %)\n\n" + "\n".join(lines) + "\n"
    output.write_text(text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
