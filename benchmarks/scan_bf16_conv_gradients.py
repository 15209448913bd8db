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
"""Find the convolutions whose bfloat16 gradients are wrong on this CPU (oneDNN backward-weights bug).

On CPUs with AVX512-BF16, PyTorch's oneDNN bfloat16 convolution (``torch.autocast("cpu", dtype=torch.bfloat16)``)
returns garbage weight gradients (values up to 1e38, NaN, or plainly wrong numbers, and sometimes heap corruption
that aborts the process) for some small feature maps. This script runs every convolution of a grid (2D and 3D;
the kernel/stride/padding kinds the package's networks and MONAI backbones use; several channel counts; contiguous
and channels-last inputs; a range of spatial sizes) forward and backward under bfloat16 autocast, and compares the
weight and input gradients with a float64 computation on the same bfloat16-rounded numbers. Each check runs in a
forked child, so a crash is recorded instead of ending the scan.

Usage::

    python benchmarks/scan_bf16_conv_gradients.py --threads 1          # the full grid, one thread
    python benchmarks/scan_bf16_conv_gradients.py --threads 2 --repeats 5
    python benchmarks/scan_bf16_conv_gradients.py --guarded             # the same grid through the package's guard

It prints one line per failing configuration and a summary: per convolution kind, the failing and the passing sizes
of the smallest spatial axis, and whether :func:`svreg_monai.utils.precision.bfloat16_conv_needs_float32` flags
every failing case (``--guarded`` runs each convolution through the guard instead and expects no failure).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svreg_monai.utils.precision import bfloat16_conv_needs_float32, guarded_convolution

__all__ = ["KINDS", "check_convolution", "main"]

KINDS = {
    # name: (kernel, stride, padding, output_padding, transposed)
    "k3s1p1": (3, 1, 1, 0, False),  # MONAI Convolution, TransMorph decoder, lambda head
    "k3s2p1": (3, 2, 1, 0, False),  # MONAI UNet / VoxelMorph down-sampling
    "k1s1p0": (1, 1, 0, 0, False),  # 1x1 projections
    "k4s4p0": (4, 4, 0, 0, False),  # Swin patch embedding
    "t3s2p1": (3, 2, 1, 1, True),  # MONAI UNet up-sampling (transposed)
    "t2s2p0": (2, 2, 0, 0, True),  # transposed x2
}
CHANNELS = ((2, 16), (16, 3), (16, 16), (32, 32), (96, 16), (48, 96))


def check_convolution(
    kind: str,
    spatial_dims: int,
    channels: tuple[int, int],
    shape: tuple[int, ...],
    channels_last: bool,
    repeats: int,
    guarded: bool = False,
) -> tuple[float, float]:
    """Largest relative error of the weight and input gradients over ``repeats`` random inputs (inf for non-finite).

    Args:
        kind: a key of :data:`KINDS`.
        spatial_dims: 2 or 3.
        channels: (input, output) channels.
        shape: spatial size of the input.
        channels_last: channels-last input.
        repeats: random inputs to try.
        guarded: run the convolution through :func:`~svreg_monai.utils.precision.guarded_convolution`.
    """
    k, s, p, op, transposed = KINDS[kind]
    cin, cout = channels
    wshape = (cin, cout) if transposed else (cout, cin)
    weight = torch.randn(*wshape, *([k] * spatial_dims)) / (cin * k**spatial_dims) ** 0.5
    fn = {(2, False): F.conv2d, (3, False): F.conv3d, (2, True): F.conv_transpose2d, (3, True): F.conv_transpose3d}[
        (spatial_dims, transposed)
    ]
    kwargs = {"stride": s, "padding": p, **({"output_padding": op} if transposed else {})}
    layout = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    worst_w = worst_x = 0.0
    for _ in range(repeats):
        x = torch.randn(1, cin, *shape)
        if channels_last:
            x = x.contiguous(memory_format=layout)
        x.requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = guarded_convolution(fn, x, w, transposed=transposed, **kwargs) if guarded else fn(x, w, **kwargs)
        gy = torch.randn(y.shape)
        y.float().backward(gy)
        x64 = x.detach().to(torch.bfloat16).double().requires_grad_(True)
        w64 = weight.to(torch.bfloat16).double().requires_grad_(True)
        fn(x64, w64, **kwargs).backward(gy.to(torch.bfloat16).double())
        for got, ref, slot in ((w.grad, w64.grad, 0), (x.grad, x64.grad, 1)):
            err = ((got.double() - ref).abs().max() / (ref.abs().max() + 1e-6)).item()
            err = err if err == err else float("inf")  # NaN -> inf
            if slot == 0:
                worst_w = max(worst_w, err)
            else:
                worst_x = max(worst_x, err)
    return worst_w, worst_x


class _Worker:
    """A forked worker process that runs checks one at a time; a check that kills it is reported as a crash.

    One persistent worker keeps oneDNN's JIT-compiled kernels between checks (a fresh process per check spends most
    of its time compiling them).
    """

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=self._serve, args=(child,), daemon=True)
        self._proc.start()
        child.close()

    @staticmethod
    def _serve(conn) -> None:
        while True:
            task = conn.recv()
            if task is None:
                return
            try:
                conn.send(("ok", check_convolution(*task)))
            except RuntimeError as e:  # an invalid configuration (e.g. kernel larger than the padded input)
                conn.send(("error", str(e).splitlines()[0]))

    def run(self, *task) -> tuple[str, object]:
        """("ok", (weight error, input error)), ("error", message) or ("crash", exit code)."""
        self._conn.send(task)
        try:
            return self._conn.recv()
        except EOFError:
            self._proc.join()
            code = self._proc.exitcode
            self._start()
            return "crash", code

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join()


def _shapes(spatial_dims: int, sizes: list[int], others: list[int]) -> list[tuple[int, ...]]:
    """Every shape with one axis from ``sizes`` and the others from ``others``, plus all-small cubes."""
    shapes = set()
    for axis in range(spatial_dims):
        for s in sizes:
            for o in others:
                shape = [o] * spatial_dims
                shape[axis] = s
                shapes.add(tuple(shape))
    small = [s for s in sizes if s <= 4]
    shapes.update(itertools.product(small, repeat=spatial_dims))
    return sorted(shapes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 32])
    parser.add_argument("--others", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--guarded", action="store_true", help="run every convolution through the package's guard")
    parser.add_argument("--tolerance", type=float, default=0.05, help="relative gradient error counted as wrong")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, oneDNN {torch.backends.mkldnn.is_available()}, threads {args.threads}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}",
        flush=True,
    )
    start = time.time()
    failures, checked, unflagged = [], 0, []
    summary: dict[tuple[int, str], dict[str, set[int]]] = {}
    worker = _Worker()
    for spatial_dims, kind, channels, channels_last in itertools.product(
        args.dims, args.kinds, CHANNELS, (False, True)
    ):
        for shape in _shapes(spatial_dims, args.sizes, args.others):
            status, result = worker.run(kind, spatial_dims, channels, shape, channels_last, args.repeats, args.guarded)
            if status == "error":
                continue
            checked += 1
            bad = status == "crash" or max(result) > args.tolerance
            entry = summary.setdefault((spatial_dims, kind), {"fail": set(), "pass": set()})
            entry["fail" if bad else "pass"].add(min(shape))
            if not bad:
                continue
            k, s, p, op, transposed = KINDS[kind]
            flagged = bfloat16_conv_needs_float32(shape, k, s, p, transposed=transposed)
            what = "crash" if status == "crash" else f"weight grad err {result[0]:.3g}, input grad err {result[1]:.3g}"
            line = (
                f"{spatial_dims}D {kind} {channels[0]:>3}->{channels[1]:<3} "
                f"{'channels-last' if channels_last else 'contiguous   '} input {shape}: {what}"
                f"{'' if flagged else '  [NOT FLAGGED by the guard rule]'}"
            )
            print(line, flush=True)
            failures.append(line)
            if not flagged:
                unflagged.append(line)
    worker.close()
    print(
        f"\n{checked} convolutions checked in {time.time() - start:.0f} s, {len(failures)} wrong"
        f"{' (through the guard)' if args.guarded else ''}."
    )
    print("smallest spatial axis of the input, failing / passing, per kind:")
    for (spatial_dims, kind), entry in sorted(summary.items()):
        print(f"  {spatial_dims}D {kind}: fail {sorted(entry['fail'])} pass {sorted(entry['pass'])}")
    if not args.guarded:
        print(f"failures the guard rule does not flag: {len(unflagged)}")
    return 1 if (failures if args.guarded else unflagged) else 0


if __name__ == "__main__":
    raise SystemExit(main())
