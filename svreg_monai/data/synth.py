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
"""Training pairs synthesised on the fly from a few anatomies (the SynthMorph recipe, Hoffmann et al., TMI 2022).

A registration pair is made from two anatomies (:class:`AnatomySource`: a synthesis label map, the tissue classes
used for Dice, and optionally a real image, all on one grid, e.g. MNI templates at 2 mm) in three steps:

1. **Deformation.** Each side gets its own random smooth diffeomorphism (:func:`random_deformation`): a stationary
   velocity field drawn as white noise on a coarse control grid, upsampled, scaled to a random peak and integrated
   by scaling and squaring, composed with a small random affine. The relative deformation between the two sides
   is then as large as the two together (peaks up to ``2 * max_displacement``).
2. **Appearance.** Either the real images of the anatomies (when both have one, with probability
   ``1 - p_synthetic``) or images synthesised from the label maps (:func:`synthesize_image`): one random mean
   intensity per tissue class shared by both sides (so the pair keeps one contrast, as the image similarity of
   the method needs), a random offset per synthesis label around its tissue's mean, per-voxel noise within
   each label, and blur.
3. **Corruption** (:func:`corrupt_intensity`), independently per side: a smooth multiplicative bias field, a
   lower resolution along a random axis, a random gamma, Gaussian noise; intensities end in [0, 1].

Every random number comes from a ``torch.Generator`` seeded by ``(seed, index)``
(:class:`SynthRegistrationDataset`), so a pair is bit-for-bit reproducible on the CPU and no data set is written
to disk: the pairs stream from the sources. Labels are warped with nearest-neighbour interpolation, so they keep
their values (no new label appears).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers import gaussian_1d, separable_filtering
from torch.utils.data import Dataset

from svreg_monai.flow.integration import scaling_and_squaring
from svreg_monai.flow.resize import resize_ddf
from svreg_monai.flow.warping import warp_image
from svreg_monai.utils.validation import check_positive_int

__all__ = [
    "AnatomySource",
    "SynthRegistrationDataset",
    "corrupt_intensity",
    "random_affine_ddf",
    "random_deformation",
    "random_velocity",
    "synthesize_image",
]


class AnatomySource(NamedTuple):
    """One anatomy the generator draws from, on the generator's grid.

    Attributes:
        name: a short name (reported with each pair).
        labels: ``(*S)`` int64 synthesis labels ``0..K-1`` (0: background), e.g. a parcellation or intensity
            clusters; images are synthesised from these.
        tissue: ``(*S)`` int64 evaluation classes ``0..C-1`` (e.g. 0 background, 1 CSF, 2 GM, 3 WM), returned as the
            pair's label maps.
        image: ``(*S)`` float32 real image in [0, 1], or None for a label-only anatomy.
    """

    name: str
    labels: torch.Tensor
    tissue: torch.Tensor
    image: torch.Tensor | None = None


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator))


def random_velocity(
    spatial_size: Sequence[int],
    generator: torch.Generator,
    peak: float,
    control_spacing: int = 8,
) -> torch.Tensor:
    """A smooth random stationary velocity field whose largest vector has length ``peak`` (voxels).

    White noise on a control grid of one node every ``control_spacing`` voxels, upsampled (trilinear) to
    ``spatial_size``.

    Args:
        spatial_size: ``(*S)`` of the field, 2D or 3D.
        generator: the random stream.
        peak: largest vector length of the field, in voxels (>= 0).
        control_spacing: voxels between control nodes (>= 1): larger is smoother.

    Returns:
        ``(1, N, *S)`` float32 velocity in voxels, channel order = array axes.
    """
    size = tuple(int(s) for s in spatial_size)
    if len(size) not in (2, 3) or min(size) < 2:
        raise ValueError(f"spatial_size must have 2 or 3 entries >= 2, got {spatial_size!r}.")
    if not (math.isfinite(peak) and peak >= 0):
        raise ValueError(f"peak must be a finite number >= 0, got {peak!r}.")
    if int(control_spacing) < 1:
        raise ValueError(f"control_spacing must be >= 1, got {control_spacing!r}.")
    coarse = tuple(max(2, -(-s // int(control_spacing)) + 1) for s in size)
    noise = torch.randn((1, len(size), *coarse), generator=generator)
    mode = "trilinear" if len(size) == 3 else "bilinear"
    field = F.interpolate(noise, size=size, mode=mode, align_corners=True)
    return field * (peak / field.norm(dim=1).max().clamp_min(1e-12))


def _random_affine(
    n: int, generator: torch.Generator, max_rotation: float, max_scaling: float, max_translation: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A - I, t)`` of a random affine map: rotations about each axis, scalings, translation."""
    for name, value in (("max_rotation", max_rotation), ("max_scaling", max_scaling),
                        ("max_translation", max_translation)):  # fmt: skip
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    rotation = torch.eye(n, dtype=torch.float64)
    for i, j in [(0, 1)] if n == 2 else [(1, 2), (0, 2), (0, 1)]:
        a = math.radians(_uniform(generator, -max_rotation, max_rotation))
        r = torch.eye(n, dtype=torch.float64)
        r[i, i] = r[j, j] = math.cos(a)
        r[i, j], r[j, i] = -math.sin(a), math.sin(a)
        rotation = r @ rotation
    scales = torch.tensor([1.0 + _uniform(generator, -max_scaling, max_scaling) for _ in range(n)], dtype=torch.float64)
    shift = torch.tensor(
        [_uniform(generator, -max_translation, max_translation) for _ in range(n)], dtype=torch.float64
    )
    return (rotation @ torch.diag(scales) - torch.eye(n, dtype=torch.float64)).float(), shift.float()


def _affine_field(size: tuple[int, ...], matrix: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    n = len(size)
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) - (s - 1) / 2 for s in size], indexing="ij")
    return (torch.einsum("ij,j...->i...", matrix, torch.stack(axes)) + shift.view(n, *([1] * n)))[None]


def random_affine_ddf(
    spatial_size: Sequence[int],
    generator: torch.Generator,
    max_rotation: float = 0.0,
    max_scaling: float = 0.0,
    max_translation: float = 0.0,
) -> torch.Tensor:
    """Displacement of a random affine map about the grid centre: ``u(x) = (A - I)(x - c) + t``.

    Args:
        spatial_size: ``(*S)``, 2D or 3D.
        generator: the random stream.
        max_rotation: largest rotation about each axis, degrees.
        max_scaling: largest relative scaling per axis (0.05: within +-5 %).
        max_translation: largest translation per axis, voxels.

    Returns:
        ``(1, N, *S)`` float32 displacement in voxels.
    """
    size = tuple(int(s) for s in spatial_size)
    if len(size) not in (2, 3):
        raise ValueError(f"spatial_size must have 2 or 3 entries, got {spatial_size!r}.")
    matrix, shift = _random_affine(len(size), generator, max_rotation, max_scaling, max_translation)
    return _affine_field(size, matrix, shift)


def random_deformation(
    spatial_size: Sequence[int],
    generator: torch.Generator,
    max_displacement: float = 4.0,
    control_spacing: int = 8,
    integration_steps: int = 7,
    max_rotation: float = 0.0,
    max_scaling: float = 0.0,
    max_translation: float = 0.0,
    field_scale: int = 2,
) -> torch.Tensor:
    """A random smooth diffeomorphic displacement: ``exp(v)`` followed by a small random affine.

    The velocity's peak is drawn uniformly in ``[0, max_displacement]`` voxels; the composition (pull-back, the
    SVF first) is ``u(x) = u_v(x) + u_a(x + u_v(x))``, exact for the affine part.

    Args:
        spatial_size: ``(*S)``, 2D or 3D.
        generator: the random stream.
        max_displacement: largest velocity peak, voxels (about the largest displacement of the SVF part).
        control_spacing: voxels between the velocity's control nodes.
        integration_steps: scaling-and-squaring steps.
        max_rotation, max_scaling, max_translation: the affine part (see :func:`random_affine_ddf`); 0 leaves it
            out.
        field_scale: the velocity is drawn and integrated on the grid pooled by this factor and the displacement
            upsampled (2: about 8x cheaper in 3D; the field is smooth on that scale anyway), 1: on the full grid.

    Returns:
        ``(1, N, *S)`` float32 displacement in voxels (``warp(image, ddf)(x) = image(x + ddf(x))``).
    """
    if not (math.isfinite(max_displacement) and max_displacement >= 0):
        raise ValueError(f"max_displacement must be a finite number >= 0, got {max_displacement!r}.")
    check_positive_int(field_scale, "field_scale")
    size = tuple(int(s) for s in spatial_size)
    grid = tuple(max(2, -(-s // field_scale)) for s in size)
    peak = _uniform(generator, 0.0, float(max_displacement))
    velocity = random_velocity(grid, generator, peak / field_scale, max(1, round(control_spacing / field_scale)))
    ddf = scaling_and_squaring(velocity, integration_steps)
    if grid != size:
        ddf = resize_ddf(ddf, size=size)
    if max_rotation or max_scaling or max_translation:
        matrix, shift = _random_affine(len(size), generator, max_rotation, max_scaling, max_translation)
        # u_a is affine: u_a(x + u_v(x)) = u_a(x) + (A - I) u_v(x), exactly
        ddf = ddf + _affine_field(size, matrix, shift) + torch.einsum("ij,bj...->bi...", matrix, ddf)
    return ddf


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(1, 1, *S)`` with ``sigma`` voxels (MONAI's ``gaussian_1d`` and
    ``separable_filtering``, replicate padding); identity below 0.1."""
    if sigma < 0.1:
        return x
    kernel = gaussian_1d(sigma, truncated=3.0).to(x)
    return separable_filtering(x, [kernel] * (x.ndim - 2), mode="replicate")


def synthesize_image(
    labels: torch.Tensor,
    label_means: torch.Tensor,
    generator: torch.Generator,
    max_label_std: float = 0.05,
    max_blur: float = 1.0,
) -> torch.Tensor:
    """An image drawn from a label map: per label a mean (given) and a random spread, then a random blur.

    Args:
        labels: ``(*S)`` int64 labels ``0..K-1``.
        label_means: ``(K,)`` mean intensity of each label.
        generator: the random stream.
        max_label_std: largest per-label noise standard deviation (drawn uniformly per label).
        max_blur: largest Gaussian blur sigma, voxels.

    Returns:
        ``(1, 1, *S)`` float32 image (not yet normalised).
    """
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}.")
    k = int(label_means.numel())
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ValueError(
            f"labels must lie in 0..{k - 1} (one mean per label), got values {int(labels.min())}..{int(labels.max())}."
        )
    stds = torch.rand(k, generator=generator) * float(max_label_std)
    idx = labels.long()
    image = label_means.float()[idx] + stds[idx] * torch.randn(labels.shape, generator=generator)
    return _gaussian_blur(image[None, None], _uniform(generator, 0.0, float(max_blur)))


def corrupt_intensity(
    image: torch.Tensor,
    generator: torch.Generator,
    bias_strength: float = 0.3,
    max_downsampling: float = 2.0,
    log_gamma_std: float = 0.25,
    max_noise: float = 0.03,
) -> torch.Tensor:
    """Scanner-like changes of an image: bias field, lower resolution along one axis, gamma, noise.

    Args:
        image: ``(1, 1, *S)`` float image.
        generator: the random stream.
        bias_strength: the bias field is ``exp(b)`` with ``b`` smooth, ``|b| <= bias_strength``.
        max_downsampling: the resolution along one random axis is divided by a factor drawn in
            ``[1, max_downsampling]`` (then restored by linear interpolation).
        log_gamma_std: ``gamma = exp(N(0, log_gamma_std))`` applied to the [0, 1] image.
        max_noise: the Gaussian noise's standard deviation is drawn in ``[0, max_noise]``.

    Returns:
        ``(1, 1, *S)`` float32 image in [0, 1].
    """
    x = image.float()
    n = x.ndim - 2
    size = tuple(x.shape[2:])
    mode = "trilinear" if n == 3 else "bilinear"
    if bias_strength > 0:
        coarse = torch.randn((1, 1, *([4] * n)), generator=generator)
        field = F.interpolate(coarse, size=size, mode=mode, align_corners=True)
        x = x * torch.exp(field / field.abs().max().clamp_min(1e-12) * float(bias_strength))
    factor = _uniform(generator, 1.0, float(max_downsampling))
    axis = int(torch.randint(n, (), generator=generator))
    if factor > 1.05:
        low = list(size)
        low[axis] = max(2, round(size[axis] / factor))
        x = F.interpolate(F.interpolate(x, size=tuple(low), mode=mode, align_corners=True), size=size, mode=mode,
                          align_corners=True)  # fmt: skip
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo).clamp_min(1e-12)
    x = x ** math.exp(float(torch.randn((), generator=generator)) * float(log_gamma_std))
    x = x + torch.randn(x.shape, generator=generator) * _uniform(generator, 0.0, float(max_noise))
    return x.clamp(0.0, 1.0)


def _label_tissue(labels: torch.Tensor, tissue: torch.Tensor, num_labels: int) -> torch.Tensor:
    """The majority tissue class of each synthesis label, ``(K,)``."""
    num_tissue = int(tissue.max()) + 1
    counts = torch.zeros(num_labels * num_tissue, dtype=torch.int64)
    counts.index_add_(
        0, (labels.long() * num_tissue + tissue.long()).flatten(), torch.ones(labels.numel(), dtype=torch.int64)
    )
    return counts.view(num_labels, num_tissue).argmax(dim=1)


class SynthRegistrationDataset(Dataset):
    """A map-style dataset of registration pairs synthesised on the fly; item ``i`` depends only on ``(seed, i)``.

    Items are dicts with ``moving`` and ``fixed`` ``(1, *S)`` float32 images in [0, 1], ``moving_label`` and
    ``fixed_label`` ``(1, *S)`` float32 tissue classes, and ``pair`` (``"source_a->source_b"``, and whether the
    images are ``real`` or ``synthetic``): the keys of the bundle's registration pipeline. A large ``num_pairs``
    with a shuffling data loader gives new pairs in every epoch.

    Args:
        sources: the anatomies, all on one grid.
        num_pairs: the dataset's length.
        seed: the base seed.
        p_synthetic: probability of images synthesised from labels when both anatomies have a real image
            (label-only anatomies always give synthetic images).
        max_displacement: largest velocity peak per side, voxels (the relative deformation reaches twice this).
        control_spacing: voxels between the velocity's control nodes.
        max_rotation, max_scaling, max_translation: the random affine per side (degrees, fraction, voxels).
        tissue_means: ``(C, 2)`` ranges of the per-tissue mean intensity of synthetic images; default: background
            in [0, 0.2], the other classes in [0, 1] (any contrast).
        label_offset: spread of each synthesis label's mean around its tissue's mean.
        corruption: keyword arguments of :func:`corrupt_intensity`.

    Raises:
        ValueError: no sources, sources on different grids, or non-integer / negative label maps.
    """

    def __init__(
        self,
        sources: Sequence[AnatomySource],
        num_pairs: int = 100_000,
        seed: int = 0,
        p_synthetic: float = 0.5,
        max_displacement: float = 4.0,
        control_spacing: int = 8,
        max_rotation: float = 3.0,
        max_scaling: float = 0.03,
        max_translation: float = 2.0,
        tissue_means: Sequence[Sequence[float]] | None = None,
        label_offset: float = 0.1,
        corruption: dict[str, Any] | None = None,
    ) -> None:
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("sources must hold at least one AnatomySource.")
        shape = tuple(self.sources[0].labels.shape)
        self.num_tissue = 0
        self.label_tissue = []
        for s in self.sources:
            for key in ("labels", "tissue"):
                t = getattr(s, key)
                if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
                    raise ValueError(f"source {s.name!r}: {key} must be an integer tensor, got {type(t).__name__} "
                                     f"{getattr(t, 'dtype', '')}.")  # fmt: skip
                if tuple(t.shape) != shape:
                    raise ValueError(f"source {s.name!r}: {key} has shape {tuple(t.shape)}, expected {shape}.")
                if int(t.min()) < 0:
                    raise ValueError(f"source {s.name!r}: {key} has negative values ({int(t.min())}).")
            if s.image is not None and tuple(s.image.shape) != shape:
                raise ValueError(f"source {s.name!r}: image has shape {tuple(s.image.shape)}, expected {shape}.")
            self.num_tissue = max(self.num_tissue, int(s.tissue.max()) + 1)
            self.label_tissue.append(_label_tissue(s.labels, s.tissue, int(s.labels.max()) + 1))
        if int(num_pairs) < 1:
            raise ValueError(f"num_pairs must be >= 1, got {num_pairs!r}.")
        if not 0.0 <= float(p_synthetic) <= 1.0:
            raise ValueError(f"p_synthetic must be in [0, 1], got {p_synthetic!r}.")
        self.spatial_size = shape
        self.num_pairs = int(num_pairs)
        self.seed = int(seed)
        self.p_synthetic = float(p_synthetic)
        self.deformation = {
            "max_displacement": float(max_displacement), "control_spacing": int(control_spacing),
            "max_rotation": float(max_rotation), "max_scaling": float(max_scaling),
            "max_translation": float(max_translation),
        }  # fmt: skip
        if tissue_means is None:
            tissue_means = [(0.0, 0.2)] + [(0.0, 1.0)] * (self.num_tissue - 1)
        self.tissue_means = torch.as_tensor(tissue_means, dtype=torch.float32)
        if self.tissue_means.shape != (self.num_tissue, 2):
            raise ValueError(
                f"tissue_means must be ({self.num_tissue}, 2) ranges, got shape {tuple(self.tissue_means.shape)}."
            )
        self.label_offset = float(label_offset)
        self.corruption = dict(corruption or {})

    def __len__(self) -> int:
        return self.num_pairs

    def generator(self, index: int) -> torch.Generator:
        """The random stream of item ``index``."""
        state = np.random.SeedSequence([self.seed, int(index)]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def _appearance(self, g: torch.Generator, which: int, tissue_means: torch.Tensor) -> torch.Tensor:
        source = self.sources[which]
        lt = self.label_tissue[which]
        means = tissue_means[lt] + (torch.rand(lt.numel(), generator=g) - 0.5) * 2 * self.label_offset
        means[0] = tissue_means[0]
        return synthesize_image(source.labels, means.clamp(0.0, 1.0), g)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.num_pairs <= index < self.num_pairs:
            raise IndexError(f"index {index} out of range for {self.num_pairs} pairs.")
        index = index % self.num_pairs
        g = self.generator(index)
        a = int(torch.randint(len(self.sources), (), generator=g))
        b = int(torch.randint(len(self.sources), (), generator=g))
        real = self.sources[a].image is not None and self.sources[b].image is not None
        synthetic = (not real) or float(torch.rand((), generator=g)) < self.p_synthetic
        lo, hi = self.tissue_means[:, 0], self.tissue_means[:, 1]
        tissue_means = lo + (hi - lo) * torch.rand(self.num_tissue, generator=g)
        out: dict[str, Any] = {}
        with torch.no_grad():
            for key, which in (("moving", a), ("fixed", b)):
                source = self.sources[which]
                if synthetic:
                    image = self._appearance(g, which, tissue_means)
                else:
                    assert source.image is not None
                    image = source.image.float()[None, None]
                ddf = random_deformation(self.spatial_size, g, **self.deformation)
                image = warp_image(image, ddf, padding_mode="border")
                label = warp_image(source.tissue.float()[None, None], ddf, mode="nearest", padding_mode="zeros")
                out[key] = corrupt_intensity(image, g, **self.corruption)[0]
                out[f"{key}_label"] = label[0]
        out["pair"] = f"{self.sources[a].name}->{self.sources[b].name} ({'synthetic' if synthetic else 'real'})"
        return out
