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
"""Time and peak memory of TransMorphTVFSPR: forward, forward+backward, and a full training iteration.

A training iteration is what the reference training script does per batch: the network on the half-resolution
pair, the displacement upsampled x2, the moving image warped at full resolution, similarity + Beta prior +
weighted diffusion, backward, and an AdamW step.

Every configuration runs in a fresh subprocess; its peak memory is the process's peak resident set size
(``VmHWM`` in ``/proc/self/status``, Linux), reported with the resident size after the imports and the model were built.

Examples::

    python benchmarks/bench_networks.py --size demo --mode forward train
    python benchmarks/bench_networks.py --size ixi --mode train --repeats 2
    python benchmarks/bench_networks.py --size ixi --mode train --use-checkpoint
    python benchmarks/bench_networks.py --size ixi --mode train --mixed-precision bfloat16 --channels-last
    # the reference implementation, for comparison (path to its IXI/ folder; needs ml_collections and timm or a
    # stand-in for timm's DropPath/trunc_normal_/to_3tuple on PYTHONPATH)
    python benchmarks/bench_networks.py --size ixi --mode train --impl reference --reference-dir /path/to/IXI
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

__all__ = ["SIZES", "main"]

SIZES = {"ixi": (160, 192, 224), "demo": (96, 128, 96), "small": (64, 64, 64)}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _build(args: argparse.Namespace):
    import torch

    size = tuple(args.img_size)
    if args.impl == "ours":
        from svreg_monai.networks import TransMorphTVFSPR

        net = TransMorphTVFSPR(
            img_size=size,
            time_steps=args.time_steps,
            use_checkpoint=args.use_checkpoint,
            use_sdpa=not args.no_sdpa,
            mixed_precision=args.mixed_precision,
            channels_last=args.channels_last,
        )

        def run(moving, fixed):
            out = net(moving, fixed)
            return out.ddf, out.weight

        def warp(image, ddf):
            from svreg_monai.flow import warp_image

            return warp_image(image, ddf)

        return net, run, warp

    sys.path[:0] = [args.reference_dir]
    from models.TransMorph import CONFIGS, TransMorphTVFSPR  # the reference implementation

    cfg = CONFIGS["TransMorph-3-LVL"]
    cfg.img_size = tuple(s // 2 for s in size)
    cfg.window_size = tuple(s // 32 for s in size)
    net = TransMorphTVFSPR(cfg, time_steps=args.time_steps, SVF=True)

    def run(moving, fixed):
        import torch.nn.functional as F

        from svreg_monai.utils.precision import autocast, check_mixed_precision

        # --mixed-precision wraps the reference's whole forward in torch.autocast (the reference has no such option;
        # this only shows how much of a speed-up comes from the precision alone)
        with autocast(moving.device.type, check_mixed_precision(args.mixed_precision)):
            flow, weight = net((F.avg_pool3d(moving, 2), F.avg_pool3d(fixed, 2)))
        flow, weight = flow.float(), weight.float()
        return F.interpolate(flow, scale_factor=2, mode="trilinear", align_corners=False) * 2, weight

    def warp(image, ddf):
        return net.spatial_trans(image, ddf)

    del torch
    return net, run, warp


def _losses(args: argparse.Namespace):
    """Similarity and regulariser of the reference configuration (NCC window 9, Beta prior, weighted diffusion)."""
    if args.impl == "reference":
        # the reference's own loss classes; NCC_vxm puts its filter on CUDA in __init__, so set its fields here
        import numpy as np
        import torch
        from losses import LocalGrad3d, NCC_vxm, logBeta

        ncc = NCC_vxm.__new__(NCC_vxm)
        torch.nn.Module.__init__(ncc)
        ncc.win = [9, 9, 9]
        ncc.win_size = torch.tensor(float(np.prod(ncc.win)))
        ncc.sum_filt = torch.ones([1, 1, 9, 9, 9])
        ncc.stride, ncc.padding, ncc.ndims = (1, 1, 1), (4, 4, 4), 3
        prior, diffusion = logBeta(), LocalGrad3d(penalty="l2")

        def loss_fn(warped, fixed, ddf, weight):
            return (
                ncc(warped, fixed)
                + prior(weight, 1.0 + args.alpha_minus_one)
                + args.lambda_max * diffusion(ddf, weight)
            )

        return loss_fn

    from svreg_monai.losses import SpatiallyVaryingRegularizationLoss
    from svreg_monai.losses.image_similarity import LocalNormalizedCrossCorrelationLoss, SquaredLocalCorrelationLoss

    if args.similarity == "lncc":
        sim = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=9)
    else:
        sim = SquaredLocalCorrelationLoss(spatial_dims=3, kernel_size=9)
    reg = SpatiallyVaryingRegularizationLoss(prior="beta", lambda_max=args.lambda_max, alpha=1.0 + args.alpha_minus_one)

    def loss_fn(warped, fixed, ddf, weight):
        return sim(warped, fixed) + reg(ddf, weight).total

    return loss_fn


def worker(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net, run, warp = _build(args)
    model_rss = _rss_kib("VmRSS")  # after the imports and the model
    size = tuple(args.img_size)
    moving = torch.rand(1, 1, *size)
    fixed = torch.rand(1, 1, *size)
    times = []
    if args.mode == "forward":
        net.eval()
        with torch.no_grad():
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                run(moving, fixed)
                times.append(time.perf_counter() - t0)
    else:
        net.train()
        loss_fn = _losses(args) if args.mode == "train" else None
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0, amsgrad=True) if loss_fn else None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ddf, weight = run(moving, fixed)
            if loss_fn is None:
                loss = ddf.square().mean() + weight.mean()
            else:
                loss = loss_fn(warp(moving, ddf), fixed, ddf, weight)
            if opt is not None:
                opt.zero_grad()
            loss.backward()
            if opt is not None:
                opt.step()
            times.append(time.perf_counter() - t0)
            del ddf, weight, loss
    return {
        "impl": args.impl,
        "mode": args.mode,
        "img_size": list(size),
        "threads": args.threads,
        "use_checkpoint": args.use_checkpoint,
        "mixed_precision": args.mixed_precision,
        "channels_last": args.channels_last,
        "similarity": args.similarity if args.impl == "ours" else "reference NCC_vxm",
        "times_s": [round(t, 3) for t in times],
        "peak_rss_gib": round(_rss_kib("VmHWM") / 2**20, 3),
        "model_rss_gib": round(model_rss / 2**20, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), nargs="+", default=["demo"], help="named input sizes")
    parser.add_argument("--img-size", type=int, nargs=3, default=None, help="a custom full-resolution size")
    parser.add_argument("--mode", choices=("forward", "backward", "train"), nargs="+", default=["forward", "train"])
    parser.add_argument("--impl", choices=("ours", "reference"), nargs="+", default=["ours"])
    parser.add_argument("--reference-dir", default=None, help="the reference repository's IXI/ folder")
    parser.add_argument("--repeats", type=int, default=2, help="iterations per configuration (the first warms up)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--time-steps", type=int, default=7)
    parser.add_argument("--use-checkpoint", action="store_true", help="gradient checkpointing (ours)")
    parser.add_argument(
        "--mixed-precision",
        choices=("bfloat16", "float16"),
        default=None,
        help="ours: the network's mixed_precision option; reference: its forward under torch.autocast",
    )
    parser.add_argument("--channels-last", action="store_true", help="channels-last convolution blocks (ours)")
    parser.add_argument("--no-sdpa", action="store_true", help="explicit attention instead of the fused kernel (ours)")
    parser.add_argument("--similarity", choices=("squared", "lncc"), default="squared")
    parser.add_argument("--lambda-max", type=float, default=1.0)
    parser.add_argument("--alpha-minus-one", type=float, default=0.1)
    parser.add_argument("--json", default=None, help="append the results to this JSON-lines file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        args.impl, args.mode = args.impl[0], args.mode[0]
        print(json.dumps(worker(args)), flush=True)
        return

    if "reference" in args.impl and not args.reference_dir:
        parser.error("--impl reference needs --reference-dir")
    sizes = [tuple(args.img_size)] if args.img_size else [SIZES[s] for s in args.size]
    for size in sizes:
        for impl in args.impl:
            for mode in args.mode:
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--impl", impl, "--mode", mode]
                cmd += ["--img-size", *map(str, size), "--repeats", str(args.repeats), "--threads", str(args.threads)]
                cmd += ["--time-steps", str(args.time_steps), "--similarity", args.similarity]
                cmd += ["--lambda-max", str(args.lambda_max), "--alpha-minus-one", str(args.alpha_minus_one)]
                if args.reference_dir:
                    cmd += ["--reference-dir", args.reference_dir]
                if args.use_checkpoint:
                    cmd.append("--use-checkpoint")
                if args.no_sdpa:
                    cmd.append("--no-sdpa")
                if args.mixed_precision:
                    cmd += ["--mixed-precision", args.mixed_precision]
                if args.channels_last:
                    cmd.append("--channels-last")
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{impl} {mode} {size}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                    continue
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                print(json.dumps(result), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
