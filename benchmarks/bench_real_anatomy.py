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
"""Trained weights on real atlas -> subject pairs: network alone and followed by per-pair optimisation, vs ANTs SyN.

The pairs and their preparation are those of ``bench_instance_optimisation.py`` (the pipeline's own affine, 2 mm
working grid, CSF/GM/WM k-means labels on both sides). By default only the pairs whose fixed image is the ROBEX
subject are run: it is the one real individual, and ``configs/synth.json`` never trains on it (the templates are
its anatomies), so these pairs are unseen. For every checkpoint given (``--checkpoint NAME=PATH``, several allowed;
default: the bundle's ``models/model.pt``) the rows are: the network alone, and ``optimise(net)`` (the
pair-registration default). ANTs ``SyNOnly`` at its defaults and at 100x70x50 (``--ants_python``) run on the same
files. Per row: Dice per class and mean, NDV, SDlogJ, time; for the network rows also λ's median and IQR inside
the brain and per tissue class of the fixed labels (CSF, GM, WM), and a figure of the λ maps
(``<output stem>_lambda.png``).

Run::

    python benchmarks/bench_real_anatomy.py --data DIR --checkpoint shipped=bundles/brain_mri_svreg/models/model.pt \
        --ants_python antsenv/bin/python --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_instance_optimisation import ANTS_SCRIPT, ants_to_ddf, evaluate, prepare, run_external
from bench_pair_registration import BUNDLE, PAIRS, shipped_network, write_results

from svreg_monai.apps import load_network
from svreg_monai.apps.bundle_tools import checkpoint_window_size
from svreg_monai.networks.nets import HyperTransMorphTVFSPR
from svreg_monai.priors import HyperparameterSpace
from svreg_monai.registration import optimize_spr

TISSUE = {1: "CSF", 2: "GM", 3: "WM"}
DEFAULT_CODES = ["0.05,0.05", "0.05,0.2", "0.05,0.5", "0.05,1", "0.5,0.2", "1,0.2"]
ANTS_SETTINGS = {"SyN default": {}, "SyN 100x70x50": {"reg_iterations": [100, 70, 50]}}


def lambda_by_tissue(weight: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Median and inter-quartile range of ``weight`` ``(1, 1, *S)`` in each tissue class of ``labels`` ``(*S)``."""
    out = {}
    for value, name in TISSUE.items():
        w = weight[0, 0][labels == value]
        if w.numel():
            q = torch.quantile(w[:: max(1, w.numel() // 500_000)], torch.tensor([0.25, 0.5, 0.75]))
            out[f"lambda_{name}"] = f"{float(q[1]):.3f} ({float(q[2] - q[0]):.3f})"
    return out


def hyper_network(checkpoint: Path) -> HyperTransMorphTVFSPR:
    """The bundle's hyper model (``configs/hyper_register.json`` on ``register.json``) with ``checkpoint``."""
    config = {**json.loads((BUNDLE / "configs" / "register.json").read_text()),
              **json.loads((BUNDLE / "configs" / "hyper_register.json").read_text())}  # fmt: skip
    window = checkpoint_window_size(checkpoint, [s // 32 for s in config["image_size"]])
    net = HyperTransMorphTVFSPR(
        img_size=config["image_size"], window_size=window, embed_dim=config["embed_dim"], depths=config["depths"],
        num_heads=config["num_heads"], time_steps=config["time_steps"], prior=config["prior"],
        hidden=config["hyper_hidden"], hyper_layers=config["hyper_layers"], generator=config["generator"],
        rank=config["rank"], base_weights=config["base_weights"],
        space=HyperparameterSpace(config["prior"], config["prior_range"], config["lambda_range"]),
    )  # fmt: skip
    return load_network(net, checkpoint)


def save_tradeoff_figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Dice and SDlogJ of the hyper model's network rows against λ_max (one line per pair, α code fixed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for pair in sorted({r["pair"] for r in rows}):
        points = sorted((r["lambda_max"], r["dice"], r["sdlogj"]) for r in rows if r["pair"] == pair)
        for ax, k in zip(axes, (1, 2)):
            ax.plot([q[0] for q in points], [q[k] for q in points], marker="o", label=pair)
    for ax, label in zip(axes, ("mean CSF/GM/WM Dice", "SDlogJ")):
        ax.set_xlabel("λ_max (hyper code r)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle("hyper model, network alone: λ_max trades Dice against smoothness", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_figure(maps: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path) -> None:
    """Axial middle slice of the fixed image and of each λ map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3 * (len(maps) + 1), 3.4))
    first = next(iter(maps.values()))[0]
    z = first.shape[-1] // 2
    axes[0].imshow(first[0, 0, :, :, z].T, origin="lower", cmap="gray")
    axes[0].set_title("fixed", fontsize=8)
    for ax, (name, (_, weight)) in zip(axes[1:], maps.items()):
        im = ax.imshow(weight[0, 0, :, :, z].T, origin="lower", cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"λ {name}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes[-1], fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with the unpacked archives")
    parser.add_argument("--pairs", nargs="+", default=[p for p in PAIRS if p.endswith("robex")], choices=list(PAIRS))
    parser.add_argument("--checkpoint", nargs="+", default=[f"shipped={BUNDLE / 'models' / 'model.pt'}"],
                        help="NAME=PATH of plain TM-SPR checkpoints (the bundle's architecture)")  # fmt: skip
    parser.add_argument("--hyper", default=None, help="NAME=PATH of a hyper model (hyper_register.json architecture)")
    parser.add_argument("--codes", nargs="+", default=DEFAULT_CODES, help="hyper codes 'b,r' for network rows")
    parser.add_argument("--hyper_optimise_codes", default="0.05,0.2",
                        help="the codes 'b,r' at which the hyper network starts the optimisation (default: α 1.01, "
                        "λ_max 1, the plain model's setting)")  # fmt: skip
    parser.add_argument("--ants_python", type=Path, default=None, help="python of a venv with antspyx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/real_anatomy.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    networks = {}
    for spec in args.checkpoint:
        name, _, path = spec.partition("=")
        if not path:
            parser.error(f"--checkpoint takes NAME=PATH, got {spec!r}")
        networks[name] = shipped_network(Path(path))
    hyper_name, hyper = None, None
    if args.hyper:
        hyper_name, _, path = args.hyper.partition("=")
        if not path:
            parser.error(f"--hyper takes NAME=PATH, got {args.hyper!r}")
        hyper = hyper_network(Path(path))
    codes = [[float(c) for c in spec.split(",")] for spec in args.codes]
    optimise_codes = [float(c) for c in args.hyper_optimise_codes.split(",")]
    rows: list[dict[str, Any]] = []
    tradeoff: list[dict[str, Any]] = []

    def add(pair: str, method: str, p: dict[str, Any], ddf, weight, seconds: float) -> None:
        row = {"pair": pair, "method": method, **evaluate(p, ddf, weight, seconds)}
        if weight is not None:
            row.update(lambda_by_tissue(weight, p["fixed_label"]))
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs:
            p = prepare(args.data, pair, Path(tmp))
            m, f = p["moving"], p["fixed"]
            add(pair, "affine only", p, torch.zeros(1, 3, *m.shape[2:]), None, 0.0)
            maps = {}
            for name, net in networks.items():
                tic = time.perf_counter()
                with torch.no_grad():
                    out = net(m, f)
                t_net = time.perf_counter() - tic
                add(pair, f"network {name}", p, out.ddf, out.weight, t_net)
                maps[f"network {name}"] = (f, out.weight)
                tic = time.perf_counter()
                res = optimize_spr(m, f, initial_velocity=out.velocity)
                add(pair, f"optimise({name})", p, res.ddf, res.weight, time.perf_counter() - tic + t_net)
                maps[f"optimise({name})"] = (f, res.weight)
            if hyper is not None:
                space = hyper.space
                for code in codes + [None]:  # None: the optimisation started at optimise_codes
                    c = torch.tensor([optimise_codes if code is None else code])
                    values = {k: float(v[0]) for k, v in space.to_values(c).items()}
                    label = f"{hyper_name} ({c[0, 0]:g}, {c[0, 1]:g}): {space.prior.parameter} " + (
                        f"{values[space.prior.parameter]:.3g}, λ_max {values['lambda_max']:.3g}"
                    )
                    tic = time.perf_counter()
                    with torch.no_grad():
                        out = hyper(m, f, c)
                    t_net = time.perf_counter() - tic
                    if code is None:  # as register.json: optimise with the hyper network's setting
                        res = optimize_spr(m, f, initial_velocity=out.velocity, lambda_max=values["lambda_max"],
                                           prior=space.prior, prior_param=values[space.prior.parameter])  # fmt: skip
                        add(pair, f"optimise(hyper {label})", p, res.ddf, res.weight, time.perf_counter() - tic)
                        maps[f"optimise(hyper {hyper_name})"] = (f, res.weight)
                        continue
                    add(pair, f"hyper {label}", p, out.ddf, out.weight, t_net)
                    if code[0] == codes[0][0]:
                        tradeoff.append({**rows[-1], "lambda_max": values["lambda_max"]})
                    if code == optimise_codes:
                        maps[f"hyper {hyper_name}"] = (f, out.weight)
            save_figure(maps, args.output.with_name(f"{args.output.stem}_{pair.replace('>', '')}_lambda.png"))
            if args.ants_python is not None:
                payload = {"fixed": p["files"]["fixed"], "moving": p["files"]["moving"], "settings": ANTS_SETTINGS,
                           "prefix": str(Path(tmp) / "ants_")}  # fmt: skip
                for name, seconds in run_external(args.ants_python, ANTS_SCRIPT, payload, args.threads).items():
                    field = np.load(str(Path(tmp) / f"ants_{name}.npy"))
                    add(pair, name, p, ants_to_ddf(field, p["affine"]), None, seconds)
    keys = ["pair", "method", "dice", "dice_csf_gm_wm", "ndv_percent", "sdlogj", "lambda_median", "lambda_iqr",
            "lambda_CSF", "lambda_GM", "lambda_WM", "time_s"]  # fmt: skip
    description = (
        f"{args.threads} threads; same 2 mm working grid and affine for every method; λ per tissue: median (IQR) "
        "inside the fixed image's CSF/GM/WM labels; checkpoints: "
        + ", ".join(args.checkpoint).replace(str(BUNDLE), "BUNDLE")
    )
    if hyper is not None:
        description += f"; hyper model: {args.hyper}".replace(str(BUNDLE), "BUNDLE")
        save_tradeoff_figure(tradeoff, args.output.with_name(f"{args.output.stem}_hyper_tradeoff.png"))
    write_results(rows, keys, "Trained weights on real anatomy", description, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
