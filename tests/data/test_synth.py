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
"""The on-the-fly pair generator: reproducibility, label-preserving warps, intensity ranges, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from svreg_monai.data.synth import (
    AnatomySource,
    SynthRegistrationDataset,
    corrupt_intensity,
    random_affine_ddf,
    random_deformation,
    random_velocity,
    synthesize_image,
)
from svreg_monai.flow.warping import warp_image
from svreg_monai.metrics.functional import jacobian_determinant

SHAPE = (24, 28, 20)


def nested_anatomy(name: str = "a", shift: float = 0.0, with_image: bool = True) -> AnatomySource:
    """Nested ellipsoids: tissue 1/2/3 (CSF/GM/WM-like) from outside in, 6 synthesis labels (two per tissue)."""
    ax = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    r = ((ax[0] - shift) ** 2 / 0.8 + ax[1] ** 2 / 0.9 + ax[2] ** 2 / 0.7).sqrt()
    tissue = torch.zeros(SHAPE, dtype=torch.int64)
    tissue[r < 0.9], tissue[r < 0.7], tissue[r < 0.45] = 1, 2, 3
    labels = tissue * 2 - (ax[1] > 0).long() * (tissue > 0).long()  # 0, then 1..6
    image = torch.tensor([0.0, 0.2, 0.5, 0.9])[tissue] if with_image else None
    return AnatomySource(name, labels, tissue, image)


@pytest.fixture(scope="module")
def dataset():
    return SynthRegistrationDataset([nested_anatomy("a"), nested_anatomy("b", 0.1), nested_anatomy("c", -0.1, False)],
                                    num_pairs=50, seed=3)  # fmt: skip


def test_items_are_seeded_and_reproducible(dataset):
    one, again = dataset[7], dataset[7]
    for key in ("moving", "fixed", "moving_label", "fixed_label"):
        assert torch.equal(one[key], again[key]), key
    rebuilt = SynthRegistrationDataset(dataset.sources, num_pairs=50, seed=3)[7]
    assert torch.equal(rebuilt["moving"], one["moving"]) and rebuilt["pair"] == one["pair"]
    assert not torch.equal(dataset[8]["moving"], one["moving"])
    assert not torch.equal(SynthRegistrationDataset(dataset.sources, num_pairs=50, seed=4)[7]["moving"], one["moving"])
    assert dataset[-1]["pair"] == dataset[49]["pair"]
    with pytest.raises(IndexError, match="out of range"):
        dataset[50]


def test_items_have_the_pipeline_keys_shapes_and_ranges(dataset):
    kinds = set()
    for i in range(12):
        item = dataset[i]
        for key in ("moving", "fixed"):
            x = item[key]
            assert x.shape == (1, *SHAPE) and x.dtype == torch.float32
            assert torch.isfinite(x).all() and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
            assert float(x.max() - x.min()) > 0.3  # not a flat image
        for key in ("moving_label", "fixed_label"):
            values = set(item[key].unique().tolist())
            assert values <= {0.0, 1.0, 2.0, 3.0} and len(values) == 4  # warped labels keep their values
        kinds.add(item["pair"].split("(")[1])
    assert kinds == {"synthetic)", "real)"}  # both appearances occur
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["moving"].shape == (2, 1, *SHAPE) and len(batch["pair"]) == 2


def test_labels_follow_the_image_through_the_warp():
    """Real images of the tissue map: the warped label map and the warped image agree voxel by voxel."""
    source = nested_anatomy()
    ds = SynthRegistrationDataset([source], num_pairs=4, p_synthetic=0.0, corruption={
        "bias_strength": 0.0, "max_downsampling": 1.0, "log_gamma_std": 0.0, "max_noise": 0.0})  # fmt: skip
    item = ds[1]
    image, label = item["moving"][0], item["moving_label"][0].long()
    values = torch.tensor([0.0, 0.2, 0.5, 0.9]) / 0.9  # after min-max scaling
    for t in range(4):
        # the image inside each warped label is that tissue's value (boundaries are interpolated, medians are not)
        median = image[label == t].median()
        assert int((values - median).abs().argmin()) == t, (t, float(median))
        assert float((image[label == t] - values[t]).abs().median()) < 0.05


def test_no_deformation_gives_the_source_labels():
    source = nested_anatomy()
    ds = SynthRegistrationDataset([source], num_pairs=2, max_displacement=0.0, max_rotation=0.0, max_scaling=0.0,
                                  max_translation=0.0)  # fmt: skip
    item = ds[0]
    assert torch.equal(item["moving_label"][0].long(), source.tissue)
    assert torch.equal(item["fixed_label"][0].long(), source.tissue)


def test_random_velocity_peak_and_smoothness():
    g = torch.Generator().manual_seed(0)
    v = random_velocity((32, 32, 32), g, peak=3.0, control_spacing=8)
    assert v.shape == (1, 3, 32, 32, 32)
    torch.testing.assert_close(v.norm(dim=1).max(), torch.tensor(3.0))
    # smooth: neighbouring vectors differ far less than the peak
    assert float((v[:, :, 1:] - v[:, :, :-1]).abs().max()) < 3.0 / 4
    assert random_velocity((16, 16), g, peak=0.0).abs().max() == 0


@pytest.mark.parametrize("spatial_size", [(32, 32, 32), (48, 40)])
def test_random_deformation_is_diffeomorphic(spatial_size):
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        ddf = random_deformation(spatial_size, g, max_displacement=5.0, max_rotation=5.0, max_scaling=0.05,
                                 max_translation=2.0)  # fmt: skip
        assert ddf.shape == (1, len(spatial_size), *spatial_size)
        assert float(jacobian_determinant(ddf).min()) > 0


def test_affine_part_is_affine_and_composes_exactly():
    g = torch.Generator().manual_seed(1)
    u = random_affine_ddf((20, 20, 20), g, max_rotation=10.0, max_scaling=0.1, max_translation=3.0)
    # an affine field has zero second differences
    for axis in (2, 3, 4):
        second = u.narrow(axis, 2, 18) - 2 * u.narrow(axis, 1, 18) + u.narrow(axis, 0, 18)
        assert float(second.abs().max()) < 1e-4
    jac = u[0, :, 1, 0, 0] - u[0, :, 0, 0, 0], u[0, :, 0, 1, 0] - u[0, :, 0, 0, 0], u[0, :, 0, 0, 1] - u[0, :, 0, 0, 0]
    det = torch.det(torch.stack(jac, dim=1).double() + torch.eye(3, dtype=torch.float64))
    assert 0.9**3 - 1e-6 <= float(det) <= 1.1**3 + 1e-6
    # random_deformation composes exactly: warp(I, u_total) = warp(warp(I, u_affine), u_svf)
    size = (24, 24, 24)
    ax = torch.meshgrid(*[torch.linspace(0, 2 * math.pi, s) for s in size], indexing="ij")
    image = (torch.sin(ax[0]) * torch.cos(ax[1]) + 0.5 * torch.sin(ax[2]))[None, None]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    total = random_deformation(size, g1, max_displacement=2.0, max_rotation=4.0, max_scaling=0.04, max_translation=1.0)
    svf = random_deformation(size, g2, max_displacement=2.0)  # the same stream up to the affine's draws
    affine = random_affine_ddf(size, g2, max_rotation=4.0, max_scaling=0.04, max_translation=1.0)
    assert float(affine.abs().max()) > 0.1
    direct = warp_image(image, total)
    sequential = warp_image(warp_image(image, affine, padding_mode="border"), svf, padding_mode="border")
    inner = (slice(None), slice(None), *[slice(5, -5)] * 3)
    assert float((direct - sequential)[inner].abs().max()) < 0.05 * float(image.abs().max())
    assert float((direct - warp_image(image, svf))[inner].abs().max()) > 0.1  # the affine part matters


@pytest.mark.parametrize("max_label_std, max_blur", [(0.0, 0.0), (0.05, 1.0)])
def test_synthesize_image_uses_one_mean_per_label(max_label_std, max_blur):
    source = nested_anatomy()
    means = torch.linspace(0.0, 1.0, 7)
    image = synthesize_image(source.labels, means, torch.Generator().manual_seed(0), max_label_std, max_blur)[0, 0]
    for k in range(7):
        region = image[source.labels == k]
        if max_label_std == 0.0 and max_blur == 0.0:
            assert torch.equal(region, torch.full_like(region, float(means[k])))
        else:
            assert abs(float(region.median()) - float(means[k])) < 0.1


def test_corrupt_intensity_ranges_and_identity():
    x = torch.rand(1, 1, 16, 16, 16) * 3 + 1
    plain = corrupt_intensity(x, torch.Generator().manual_seed(0), bias_strength=0.0, max_downsampling=1.0,
                              log_gamma_std=0.0, max_noise=0.0)  # fmt: skip
    torch.testing.assert_close(plain, (x - x.min()) / (x.max() - x.min()))
    for seed in range(5):
        y = corrupt_intensity(x, torch.Generator().manual_seed(seed))
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1 and torch.isfinite(y).all()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda s: [], "at least one"),
        (lambda s: [s._replace(labels=s.labels.float())], "integer tensor"),
        (lambda s: [s._replace(tissue=s.tissue - 1)], "negative"),
        (lambda s: [s._replace(tissue=s.tissue[:-1])], "shape"),
        (lambda s: [s._replace(image=s.image[:-1])], "image has shape"),
        (lambda s: [s, nested_anatomy()._replace(labels=torch.zeros(4, 4, 4, dtype=torch.int64))], "shape"),
    ],
)
def test_bad_sources_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        SynthRegistrationDataset(make(nested_anatomy()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_pairs": 0}, "num_pairs"),
        ({"p_synthetic": 1.5}, "p_synthetic"),
        ({"tissue_means": [(0, 1)] * 3}, "tissue_means"),
        ({"max_rotation": -1.0}, "max_rotation"),
    ],
)
def test_bad_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ds = SynthRegistrationDataset([nested_anatomy()], **kwargs)
        ds[0]


def test_bad_label_values_in_synthesis():
    with pytest.raises(ValueError, match="0..2"):
        synthesize_image(torch.tensor([[0, 3]]), torch.zeros(3), torch.Generator())
    with pytest.raises(ValueError, match="integer"):
        synthesize_image(torch.zeros(2, 2), torch.zeros(3), torch.Generator())
    with pytest.raises(ValueError, match="peak"):
        random_velocity((8, 8), torch.Generator(), peak=float("nan"))
