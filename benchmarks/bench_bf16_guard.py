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
"""What the bfloat16 convolution guard costs: a TM-SPR training step (forward + backward) with and without it.

Usage::

    python benchmarks/bench_bf16_guard.py                       # the brain bundle's network, 96^3 and 32x96x96
    python benchmarks/bench_bf16_guard.py --sizes 96 96 96 --repeats 5 --threads 2

For each input size it builds the bundle's TM-SPR (embed 48, depths 2/2/2, 7 steps) with
``mixed_precision="bfloat16", channels_last=True``, times ``repeats`` training steps (the median after one warm-up)
with the guarded convolutions and with the guard removed (the original classes put back), interleaved, and prints
the ratio and whether the unguarded gradients were finite. At sizes where no convolution is flagged (every axis
>= 64) the guard only adds a shape check per convolution call; at sizes with an axis of 32 the first decoder block
runs in float32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svreg_monai.networks.nets import TransMorphTVFSPR
from svreg_monai.utils.precision import GUARDED_CONVOLUTIONS, bfloat16_conv_needs_float32

__all__ = ["main", "unguard"]


def unguard(module: torch.nn.Module) -> torch.nn.Module:
    """Put the original convolution classes back (the inverse of ``guard_bfloat16_convolutions``), in place."""
    plain = {guarded: base for base, guarded in GUARDED_CONVOLUTIONS.items()}
    for m in module.modules():
        if type(m) in plain:
            m.__class__ = plain[type(m)]
    return module


def _step(net: TransMorphTVFSPR, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[float, bool]:
    net.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out = net(moving, fixed)
    (out.ddf.square().mean() - out.weight.log().mean()).backward()
    elapsed = time.perf_counter() - start
    finite = all(bool(torch.isfinite(p.grad).all()) for p in net.parameters() if p.grad is not None)
    return elapsed, finite


def _flagged(net: TransMorphTVFSPR, moving: torch.Tensor, fixed: torch.Tensor) -> int:
    """Number of convolution calls the guard runs in float32 for this input."""
    count = []

    def hook(m, args):
        x = args[0]
        count.append(bfloat16_conv_needs_float32(x.shape[2:], m.kernel_size, m.stride, m.padding, m.dilation))

    handles = [m.register_forward_pre_hook(hook) for m in net.modules() if type(m) in GUARDED_CONVOLUTIONS.values()]
    with torch.no_grad():
        net(moving, fixed)
    for h in handles:
        h.remove()
    return sum(count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 96, 96, 32, 96, 96], help="3 ints per size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [tuple(args.sizes[i : i + 3]) for i in range(0, len(args.sizes), 3)]
    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, threads {args.threads}, CPU capability {cpu}")
    print("| input size | flagged convs | guarded (s) | unguarded (s) | ratio | unguarded finite |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        torch.manual_seed(0)
        guarded = TransMorphTVFSPR(
            img_size=size, embed_dim=48, depths=(2, 2, 2), num_heads=(4, 4, 4), time_steps=7,
            mixed_precision="bfloat16", channels_last=True,
        )  # fmt: skip
        plain = TransMorphTVFSPR(
            img_size=size, embed_dim=48, depths=(2, 2, 2), num_heads=(4, 4, 4), time_steps=7,
            mixed_precision="bfloat16", channels_last=True,
        )  # fmt: skip
        plain.load_state_dict(guarded.state_dict())
        unguard(plain)
        moving, fixed = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
        flagged = _flagged(guarded, moving, fixed)
        _step(guarded, moving, fixed), _step(plain, moving, fixed)  # warm-up
        times: dict[str, list[float]] = {"guarded": [], "plain": []}
        finite = True
        for _ in range(args.repeats):
            times["guarded"].append(_step(guarded, moving, fixed)[0])
            t, ok = _step(plain, moving, fixed)
            times["plain"].append(t)
            finite &= ok
        g, p = statistics.median(times["guarded"]), statistics.median(times["plain"])
        print(f"| {size} | {flagged} | {g:.3f} | {p:.3f} | {g / p:.3f} | {finite} |", flush=True)


if __name__ == "__main__":
    main()
