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
"""Tests of the stateless Jacobian measures: analytic cases, masks, errors, and an independent numpy cross-check."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from svreg_monai.metrics import (
    compute_jacobian_metrics,
    jacobian_determinant,
    negative_jacobian_percent,
    non_diffeomorphic_measures,
    non_diffeomorphic_volume,
    sd_log_jacobian,
)

DTYPES = [torch.float32, torch.float64]
SHAPES = [(9, 10), (7, 8, 9)]


def _linear_ddf(a: np.ndarray, shape: tuple[int, ...], batch: int = 1, dtype: torch.dtype = torch.float64):
    """``u_c(x) = sum_a A[c, a] x_a`` with ``x_a`` the index along spatial axis ``a``: ``(B, N, *S)``."""
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij")
    x = torch.stack(grids)  # (N, *S)
    u = torch.einsum("ca,a...->c...", torch.as_tensor(a, dtype=torch.float64), x)
    return u.unsqueeze(0).repeat(batch, *([1] * (len(shape) + 1))).to(dtype)


def _block_fold(size: int = 12) -> torch.Tensor:
    """3D field with ``u_0(x) = -3 x_0`` on the block ``[4, 8)^3`` and 0 elsewhere: ``(1, 3, size, size, size)``."""
    ddf = torch.zeros(1, 3, size, size, size, dtype=torch.float64)
    x0 = torch.arange(size, dtype=torch.float64).reshape(-1, 1, 1)
    ddf[0, 0, 4:8, 4:8, 4:8] = (-3.0 * x0).expand(size, size, size)[4:8, 4:8, 4:8]
    return ddf


# ---------------------------------------------------------------- independent numpy reference (paper definitions)


def _np_det(rows: list[np.ndarray]) -> np.ndarray:
    """``rows``: N arrays ``(N, *S)`` (edge vectors); returns ``det`` of the stacked ``(*S, N, N)`` matrices."""
    mat = np.stack([np.moveaxis(r, 0, -1) for r in rows], axis=-2)
    return np.linalg.det(mat)


def _np_reference(u: np.ndarray, mask: np.ndarray | None = None, eps: float = 1e-9):
    """NDP, NDT, NDV (%) and SDlogJ of one field ``u`` ``(N, *S)`` straight from Liu et al. (2024)."""
    n = u.ndim - 1
    shape = u.shape[1:]
    phi = u + np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    inner = (slice(None),) + (slice(1, -1),) * n

    def at(offset):  # phi(p + offset) at interior voxels p
        return np.roll(phi, shift=[-o for o in offset], axis=tuple(range(1, n + 1)))[inner]

    def unit(a, s=1):
        return tuple(s if i == a else 0 for i in range(n))

    zero = (0,) * n
    central = _np_det([(at(unit(a)) - at(unit(a, -1))) / 2 for a in range(n)])
    simplices = []
    for signs in itertools.product((1, -1), repeat=n):  # one-sided forward (+) / backward (-) differences
        rows = [(at(unit(a)) - at(zero)) if s > 0 else (at(zero) - at(unit(a, -1))) for a, s in enumerate(signs)]
        simplices.append(_np_det(rows))
    if n == 3:  # the two central tetrahedra of the 5-tetrahedra cube divisions
        for offsets in (((-1, -1, 0), (-1, 0, -1), (0, -1, -1)), ((1, 1, 0), (0, 1, 1), (1, 0, 1))):
            simplices.append(_np_det([at(o) - at(zero) for o in offsets]))
    m = np.ones(central.shape) if mask is None else (mask[(slice(1, -1),) * n] != 0).astype(np.float64)
    total = m.sum()
    ndp = 100 * ((central <= 0) * m).sum() / total
    ndt = 100 * sum(((j <= 0) * m).sum() for j in simplices) / len(simplices) / total
    ndv = 100 * sum((0.5 * np.maximum(-j, 0) / math.factorial(n) * m).sum() for j in simplices) / total
    log_j = np.log(np.clip(central, eps, None))[m > 0]
    return ndp, ndt, ndv, log_j.std()


def _smooth_random_field(shape: tuple[int, ...], scale: float, seed: int, batch: int = 2) -> torch.Tensor:
    """Upsampled random noise ``(B, N, *S)``, smooth, with folds for large enough ``scale``."""
    gen = torch.Generator().manual_seed(seed)
    n = len(shape)
    coarse = torch.randn(batch, n, *[max(2, s // 3) for s in shape], generator=gen, dtype=torch.float64)
    mode = "bilinear" if n == 2 else "trilinear"
    return torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=True) * scale


# ---------------------------------------------------------------- analytic cases


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_identity(shape, dtype):
    ddf = torch.zeros(2, len(shape), *shape, dtype=dtype)
    det = jacobian_determinant(ddf)
    assert det.shape == (2, 1, *shape) and det.dtype == dtype
    torch.testing.assert_close(det, torch.ones_like(det))
    measures = non_diffeomorphic_measures(ddf)
    for value in (*measures, negative_jacobian_percent(ddf), non_diffeomorphic_volume(ddf), sd_log_jacobian(ddf)):
        assert value.shape == (2,) and value.dtype == dtype
        torch.testing.assert_close(value, torch.zeros_like(value))


LINEAR_CASES = [
    ("2d_shear_scale", np.array([[0.3, 0.2], [-0.1, -0.4]])),
    ("2d_reflection", np.array([[-2.0, 0.1], [0.0, 0.0]])),  # det(I + A) = -1
    ("2d_collapse", np.array([[-1.0, 0.0], [0.0, 0.0]])),  # det(I + A) = 0 counts as folded
    ("3d_general", np.array([[0.2, -0.1, 0.05], [0.3, -0.3, 0.1], [0.0, 0.15, 0.4]])),
    ("3d_reflection", np.array([[-1.5, 0.2, 0.0], [0.0, 0.1, 0.0], [0.1, 0.0, -0.2]])),
]


@pytest.mark.parametrize("name,a", LINEAR_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_field(name, a, dtype):
    n = a.shape[0]
    shape = SHAPES[n - 2]
    ddf = _linear_ddf(a, shape, batch=2, dtype=dtype)
    expected = float(np.linalg.det(np.eye(n) + a))
    det = jacobian_determinant(ddf)
    torch.testing.assert_close(det, torch.full_like(det, expected), atol=1e-5, rtol=1e-5)  # border included
    measures = non_diffeomorphic_measures(ddf)
    folded = expected <= 1e-12
    # every simplex of an affine map has det = det(I + A) times its identity value (1, or 2 for J*_1/J*_2),
    # so NDV = 100 * max(-det(I + A), 0) and all-or-nothing NDP/NDT.
    torch.testing.assert_close(measures.ndp, torch.full((2,), 100.0 * folded, dtype=dtype))
    torch.testing.assert_close(measures.ndt, torch.full((2,), 100.0 * folded, dtype=dtype))
    torch.testing.assert_close(
        measures.ndv, torch.full((2,), 100.0 * max(-expected, 0.0), dtype=dtype), atol=1e-4, rtol=1e-5
    )
    sd = sd_log_jacobian(ddf)
    torch.testing.assert_close(sd, torch.zeros_like(sd), atol=1e-5, rtol=0)


def test_block_fold_analytic():
    # det J = 1 + du_0/dx_0 (lower-triangular Jacobian); the central difference is <= 0 for x_0 in {3, 4, 5, 6}
    # and x_1, x_2 in [4, 8): 64 of the 10^3 interior voxels.
    ddf = _block_fold()
    torch.testing.assert_close(negative_jacobian_percent(ddf), torch.tensor([6.4], dtype=torch.float64))
    det = jacobian_determinant(ddf)[0, 0]
    assert det[5, 5, 5].item() == pytest.approx(-2.0) and det[4, 5, 5].item() == pytest.approx(-6.5)
    measures = non_diffeomorphic_measures(ddf)
    assert measures.ndv.item() > 0 and measures.ndt.item() > 0
    ref = _np_reference(ddf[0].numpy())
    np.testing.assert_allclose([*measures, sd_log_jacobian(ddf)], [[r] for r in ref], rtol=1e-10)


def test_per_sample_batch():
    fold = _block_fold()
    ddf = torch.cat([torch.zeros_like(fold), fold, 0.5 * fold])
    ndp = negative_jacobian_percent(ddf)
    ndv = non_diffeomorphic_volume(ddf)
    assert ndp[0] == 0 and ndp[1] == pytest.approx(6.4) and ndv[0] == 0 and ndv[1] > ndv[2] > 0
    for i in range(3):  # each row equals the single-sample result
        np.testing.assert_allclose(compute_jacobian_metrics(ddf)[i], compute_jacobian_metrics(ddf[i : i + 1])[0])


# ---------------------------------------------------------------- masks


def test_masks():
    ddf = _block_fold()
    inside = torch.zeros(1, 1, 12, 12, 12)
    inside[..., 3:7, 4:8, 4:8] = 1  # exactly the 64 folded voxels
    outside = torch.ones(1, 1, 12, 12, 12, dtype=torch.bool)
    outside[..., 2:10, 2:10, 2:10] = False  # the folded block and its one-voxel halo are excluded
    torch.testing.assert_close(negative_jacobian_percent(ddf, inside), torch.tensor([100.0], dtype=torch.float64))
    assert negative_jacobian_percent(ddf, outside).item() == 0 and non_diffeomorphic_volume(ddf, outside).item() == 0
    assert non_diffeomorphic_volume(ddf, inside).item() > non_diffeomorphic_volume(ddf).item()
    # (1, 1, *S) broadcasts over the batch; integer masks: nonzero = inside
    batch = torch.cat([ddf, ddf])
    torch.testing.assert_close(
        negative_jacobian_percent(batch, (inside * 7).int()), torch.tensor([100.0, 100.0], dtype=torch.float64)
    )
    # per-sample masks, and an empty (border-only) mask gives NaN
    border = torch.ones(1, 1, 12, 12, 12)
    border[..., 1:-1, 1:-1, 1:-1] = 0
    out = compute_jacobian_metrics(batch, torch.cat([inside, border]))
    assert out[0, 0] == 100.0 and torch.isnan(out[1]).all()
    ref = _np_reference(ddf[0].numpy(), inside[0, 0].numpy())
    np.testing.assert_allclose(out[0].numpy(), [ref[0], ref[2], ref[3]], rtol=1e-10)


# ---------------------------------------------------------------- independent cross-check on random folding fields


@pytest.mark.parametrize(
    "shape,scale,seed,dtype",
    [
        ((12, 12, 12), 2.0, 0, torch.float64),
        ((10, 13, 11), 4.0, 1, torch.float64),
        ((12, 12, 12), 3.0, 2, torch.float32),
        ((20, 17), 2.0, 3, torch.float64),
        ((16, 16), 4.0, 4, torch.float32),
    ],
)
def test_cross_check_numpy(shape, scale, seed, dtype):
    ddf = _smooth_random_field(shape, scale, seed)
    mask = (torch.rand(2, 1, *shape, generator=torch.Generator().manual_seed(seed)) > 0.3).to(torch.float64)
    for m in (None, mask):
        out_ndt = non_diffeomorphic_measures(ddf.to(dtype), None if m is None else m.to(dtype))
        out = compute_jacobian_metrics(ddf.to(dtype), None if m is None else m.to(dtype))
        for b in range(2):
            ndp, ndt, ndv, sd = _np_reference(ddf[b].numpy(), None if m is None else m[b, 0].numpy())
            assert ndv > 0, "the random field should fold"
            rtol = 1e-10 if dtype == torch.float64 else 1e-5
            np.testing.assert_allclose(out[b].double().numpy(), [ndp, ndv, sd], rtol=rtol, atol=1e-12)
            np.testing.assert_allclose(out_ndt.ndt[b].item(), ndt, rtol=rtol)


@pytest.mark.parametrize("shape", SHAPES)
def test_jacobian_determinant_matches_numpy_gradient(shape):
    ddf = _smooth_random_field(shape, 2.0, seed=5, batch=1)
    u = ddf[0].numpy()
    grads = [np.gradient(u, axis=a + 1) for a in range(len(shape))]  # central inside, one-sided on the border
    expected = _np_det([g + np.eye(len(shape))[a].reshape(-1, *[1] * len(shape)) for a, g in enumerate(grads)])
    np.testing.assert_allclose(jacobian_determinant(ddf)[0, 0].numpy(), expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- errors


def _bad_inputs():
    good = torch.zeros(1, 3, 6, 6, 6)
    nan = good.clone()
    nan[0, 1, 2, 2, 2] = float("nan")
    inf = good.clone()
    inf[0, 0, 0, 0, 0] = float("inf")
    return [
        ("nan", nan, None, "non-finite"),
        ("inf", inf, None, "non-finite"),
        ("channels", torch.zeros(1, 2, 6, 6, 6), None, "channels"),
        ("ndim", torch.zeros(3, 6, 6, 6), None, "dimensions"),
        ("too_small", torch.zeros(1, 3, 6, 2, 6), None, "at least 3"),
        ("mask_shape", good, torch.ones(1, 1, 6, 6, 5), "mask must have shape"),
        ("mask_batch", torch.zeros(2, 3, 6, 6, 6), torch.ones(3, 1, 6, 6, 6), "mask must have shape"),
        ("mask_channels", good, torch.ones(1, 2, 6, 6, 6), "mask must have shape"),
        ("mask_ndim", good, torch.ones(1, 6, 6, 6), "mask must have 5"),
        ("mask_nan", good, torch.full((1, 1, 6, 6, 6), float("nan")), "non-finite"),
    ]


@pytest.mark.parametrize("name,ddf,mask,match", _bad_inputs())
@pytest.mark.parametrize(
    "fn", [negative_jacobian_percent, non_diffeomorphic_volume, sd_log_jacobian, compute_jacobian_metrics]
)
def test_invalid_inputs(fn, name, ddf, mask, match):
    with pytest.raises(ValueError, match=match):
        fn(ddf, mask)


@pytest.mark.parametrize("ddf", [torch.zeros(1, 2, 1, 5), torch.zeros(1, 3, 4, 4, 4, dtype=torch.int64)])
def test_jacobian_determinant_invalid(ddf):
    with pytest.raises(ValueError):
        jacobian_determinant(ddf)


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan"), "1e-9"])
def test_invalid_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        sd_log_jacobian(torch.zeros(1, 2, 5, 5), eps=eps)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_device_mismatch():
    ddf = _smooth_random_field((12, 12, 12), 3.0, seed=6)
    mask = torch.ones(2, 1, 12, 12, 12)
    torch.testing.assert_close(compute_jacobian_metrics(ddf.cuda(), mask.cuda()).cpu(), compute_jacobian_metrics(ddf))
    with pytest.raises(ValueError, match="device"):
        compute_jacobian_metrics(ddf.cuda(), mask)
