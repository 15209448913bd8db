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
"""Benchmark the fast similarity losses against MONAI's (forward + backward), and check that the values agree.

Usage::

    python benchmarks/bench_components.py                      # 160x192x224, kernel 9, CPU
    python benchmarks/bench_components.py --size 64 64 64 --repeats 5 --kernel-type gaussian --threads 2

For each loss it prints the best-of-``repeats`` wall time of ``loss(pred, target).backward()`` (the two losses are
interleaved) for MONAI's ``LocalNormalizedCrossCorrelationLoss`` and ours, their ratio, and the maximum absolute
(and relative) difference of the loss value and of ``pred.grad``. Timings on a shared machine are noisy: use
several repeats. It also times the voxelmorph-style ``SquaredLocalCorrelationLoss``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss as MonaiLNCC

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svreg_monai.losses.image_similarity import (
    LocalNormalizedCrossCorrelationLoss,
    SquaredLocalCorrelationLoss,
)

__all__ = ["main", "time_forward_backward"]


def time_forward_backward(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    pred: torch.Tensor,
    target: torch.Tensor,
    repeats: int,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Return the best wall time of ``repeats`` forward + backward passes, the loss value and ``pred.grad``.

    Args:
        loss_fn: the loss module.
        pred: leaf tensor ``(B, C, H, W[, D])`` with ``requires_grad=True``.
        target: tensor of the same shape.
        repeats: number of timed repetitions.
    """
    best = float("inf")
    value = grad = torch.empty(0)
    for _ in range(repeats):
        pred.grad = None
        if pred.device.type == "cuda":
            torch.cuda.synchronize(pred.device)
        start = time.perf_counter()
        loss = loss_fn(pred, target)
        loss.backward()
        if pred.device.type == "cuda":
            torch.cuda.synchronize(pred.device)
        best = min(best, time.perf_counter() - start)
        value, grad = loss.detach(), pred.grad.detach().clone()
    return best, value, grad


def _diff(a: torch.Tensor, b: torch.Tensor) -> str:
    abs_diff = (a.double() - b.double()).abs().max().item()
    scale = b.double().abs().max().item()
    return f"max abs diff {abs_diff:.3e} (max |ref| {scale:.3e}, relative {abs_diff / max(scale, 1e-30):.3e})"


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs="+", default=[160, 192, 224], help="spatial size (2 or 3 ints)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (best is reported)")
    parser.add_argument("--kernel-size", type=int, default=9)
    parser.add_argument("--kernel-type", default="rectangular", choices=("rectangular", "triangular", "gaussian"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--skip-monai", action="store_true", help="only time the fast implementations")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spatial_dims = len(args.size)
    gen = torch.Generator().manual_seed(0)
    # partially correlated random images, so that the local correlations are neither 0 nor 1
    base = torch.rand(1, 1, *args.size, generator=gen)
    target = (base + 0.1 * torch.rand(1, 1, *args.size, generator=gen)).to(device)
    pred = (base.flip(-1) * 0.5 + base * 0.5).to(device).requires_grad_(True)
    print(
        f"size {tuple(args.size)}, batch 1, channel 1, float32, kernel {args.kernel_type} {args.kernel_size}, "
        f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}"
    )

    fast = LocalNormalizedCrossCorrelationLoss(spatial_dims, args.kernel_size, args.kernel_type)
    ref = MonaiLNCC(spatial_dims, args.kernel_size, args.kernel_type).to(device)
    time_forward_backward(fast, pred, target, 1)  # warm-up
    # interleave the two so that both see the same background load (timings on a shared machine are noisy)
    t_fast = t_ref = float("inf")
    for _ in range(args.repeats):
        t, v_fast, g_fast = time_forward_backward(fast, pred, target, 1)
        t_fast = min(t_fast, t)
        if not args.skip_monai:
            t, v_ref, g_ref = time_forward_backward(ref, pred, target, 1)
            t_ref = min(t_ref, t)
    print(f"fast LNCC : {t_fast:8.3f} s  (loss {v_fast.item():.8f})")
    if not args.skip_monai:
        print(f"MONAI LNCC: {t_ref:8.3f} s  (loss {v_ref.item():.8f})")
        print(f"speed-up  : {t_ref / t_fast:8.2f} x")
        print(f"loss      : {_diff(v_fast, v_ref)}")
        print(f"pred.grad : {_diff(g_fast, g_ref)}")
    if args.kernel_type == "rectangular":
        vxm = SquaredLocalCorrelationLoss(spatial_dims, args.kernel_size)
        t_vxm, v_vxm, _ = time_forward_backward(vxm, pred, target, args.repeats)
        print(f"fast NCC_vxm (SquaredLocalCorrelationLoss): {t_vxm:8.3f} s  (loss {v_vxm.item():.8f})")


if __name__ == "__main__":
    main()
