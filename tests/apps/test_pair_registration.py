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
"""Pair registration from files: world-space outputs that ITK itself reproduces, orientation invariance, bad input.

The deformable stage here is an analytic "network" (a known smooth stationary velocity field, integrated by the
package's scaling and squaring), so that the checks are about geometry and files, not about a trained model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn

from svreg_monai.apps import register_pair
from svreg_monai.flow.integration import scaling_and_squaring
from svreg_monai.networks.nets import TransMorphTVFSPR
from svreg_monai.networks.nets.outputs import RegistrationOutput
from svreg_monai.utils.world import RAS_TO_LPS, resample_through
from tests.registration.test_affine import phantom
from tests.utils.test_world import _rotation, oblique_affine

itk = pytest.importorskip("itk")


class SmoothVelocityNet(nn.Module):
    """A parameter-free stand-in for a registration network: ``exp(v)`` of a fixed smooth ``v`` (in voxels)."""

    def __init__(self, amplitude: float = 1.5) -> None:
        super().__init__()
        self.amplitude = amplitude

    def velocity(self, shape) -> torch.Tensor:
        axes = [torch.linspace(0, math.pi, s) for s in shape]
        x, y, z = torch.meshgrid(*axes, indexing="ij")
        v = torch.stack((torch.sin(y) * torch.sin(z), torch.sin(x) * torch.cos(z), torch.cos(x) * torch.sin(y)))
        return self.amplitude * v[None]

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        v = self.velocity(fixed.shape[2:])
        weight = torch.sigmoid(fixed - 0.2)
        return RegistrationOutput(scaling_and_squaring(v, 7), v, weight)

    def inverse_ddf(self, velocity: torch.Tensor, spatial_size) -> torch.Tensor:
        return scaling_and_squaring(-velocity, 7)


def centred(affine: np.ndarray, shape, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """``affine`` with the origin moved so that the grid's centre voxel sits at the world point ``centre``."""
    out = affine.copy()
    out[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return out


FIXED_SHAPE = (36, 40, 32)
FIXED_AFFINE = centred(oblique_affine(angles=(8.0, -12.0, 20.0), spacing=(2.2, 1.8, 2.5)), FIXED_SHAPE)
#: fixed -> moving world map used to make the moving image
TRUE_MAP = np.eye(4)
TRUE_MAP[:3, :3] = _rotation((4.0, -3.0, 6.0)) * 1.04
TRUE_MAP[:3, 3] = [3.0, -2.0, 1.0]
FAST_AFFINE = {"spacings": (8.0,), "iterations": (40,)}


def _save(path: Path, array: np.ndarray, affine: np.ndarray, dtype=np.float32) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), affine), str(path))
    return path


def _labels(image: torch.Tensor) -> np.ndarray:
    x = image[0].numpy()
    return (x > 0.3).astype(np.uint8) + (x > 0.6).astype(np.uint8)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A fixed image on an oblique, flipped, anisotropic grid and a moving image on another grid, with labels."""
    root = tmp_path_factory.mktemp("pair")
    fixed = phantom(FIXED_AFFINE, FIXED_SHAPE)
    moving_affine = oblique_affine(angles=(0.0, 0.0, 90.0), spacing=(1.6, 2.0, 2.0), flip=(1, 1, -1))
    moving_affine = centred(moving_affine, (56, 48, 40), centre=(4.0, -6.0, 3.0))
    moving = resample_through(
        phantom(FIXED_AFFINE, FIXED_SHAPE), FIXED_AFFINE, moving_affine, (56, 48, 40), matrix=np.linalg.inv(TRUE_MAP)
    )
    return {
        "root": root,
        "fixed": _save(root / "fixed.nii.gz", fixed[0].numpy(), FIXED_AFFINE),
        "fixed_label": _save(root / "fixed_seg.nii.gz", _labels(fixed), FIXED_AFFINE, np.uint8),
        "moving": _save(root / "moving.nii.gz", moving[0].numpy(), moving_affine),
        "moving_label": _save(root / "moving_seg.nii.gz", _labels(moving), moving_affine, np.uint8),
        "moving_affine": moving_affine,
    }


@pytest.fixture(scope="module")
def registered(pair):
    out = pair["root"] / "out"
    result = register_pair(
        pair["moving"],
        pair["fixed"],
        out,
        network=SmoothVelocityNet(),
        moving_label=pair["moving_label"],
        fixed_label=pair["fixed_label"],
        spacing=4.0,
        size_divisor=8,
        affine_options=FAST_AFFINE,
        num_threads=1,
    )
    return result


def test_outputs_and_report(registered, pair):
    names = {p.name for p in registered.output_dir.iterdir()}
    assert names == {
        "warped.nii.gz", "warped_label.nii.gz", "affine.mat", "warp.nii.gz", "inverse_warp.nii.gz", "transform.h5",
        "inverse_transform.h5", "lambda.nii.gz", "jacobian.nii.gz", "figure.png", "report.json",
    }  # fmt: skip
    report = json.loads((registered.output_dir / "report.json").read_text())
    assert report["parameters"]["spacing"] == 4.0 and report["parameters"]["num_threads"] == 1
    assert set(report["timings_s"]) >= {"load", "preprocess", "affine", "deformable", "outputs", "total"}
    assert report["versions"]["svreg_monai"] and report["versions"]["itk"]
    m = report["metrics"]
    assert m["ndv_percent"] == 0.0 and 0.0 < m["sd_log_jacobian"] < 1.0
    # the affine stage recovers the known map: Dice after it is far above the headers' alignment
    dice = m["dice"]
    assert dice["affine"]["mean"] > 0.9 > dice["header"]["mean"] + 0.1, dice
    warped = nib.load(registered.files["warped"])
    np.testing.assert_allclose(warped.affine, FIXED_AFFINE, atol=1e-5)  # the fixed image's original grid
    assert warped.shape == FIXED_SHAPE
    lab = np.asarray(nib.load(registered.files["warped_label"]).dataobj)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1, 2}
    assert nib.load(registered.files["weight"]).shape == FIXED_SHAPE
    # the true map is recovered by the affine stage (within a voxel of the working grid)
    centre = FIXED_AFFINE[:3, :3] @ (np.array(FIXED_SHAPE) / 2) + FIXED_AFFINE[:3, 3]
    np.testing.assert_allclose(registered.affine @ [*centre, 1], TRUE_MAP @ [*centre, 1], atol=2.0)


def _itk_array(image) -> np.ndarray:
    return np.transpose(itk.array_from_image(image))  # ITK's [z, y, x] -> our [i, j, k]


def _resample_with_itk(pair, transform):
    moving = itk.imread(str(pair["moving"]), itk.F)
    fixed = itk.imread(str(pair["fixed"]), itk.F)
    return _itk_array(
        itk.resample_image_filter(moving, transform=transform, use_reference_image=True, reference_image=fixed)
    )


def test_itk_reproduces_the_warp(registered, pair):
    """ITK's ResampleImageFilter with our transform files, and no code of ours, gives our warped image."""
    ours = np.asarray(nib.load(registered.files["warped"]).dataobj)
    composite = itk.transformread(str(registered.files["transform"]))[0]
    by_h5 = _resample_with_itk(pair, composite)
    # the same from the separate files (what antsApplyTransforms -t affine.mat ... takes): warp field, then affine
    reader = itk.ImageFileReader[itk.VectorImage[itk.D, 3]].New(FileName=str(registered.files["warp"]))
    reader.Update()
    field = reader.GetOutput()
    displacement = itk.DisplacementFieldTransform[itk.D, 3].New()
    displacement.SetDisplacementField(field)
    affine = itk.transformread(str(registered.files["affine"]))[0]
    both = itk.CompositeTransform[itk.D, 3].New()
    both.AddTransform(affine)
    both.AddTransform(displacement)  # added last = applied first
    by_files = _resample_with_itk(pair, both)
    assert (ours > 0.05).mean() > 0.2
    for theirs in (by_h5, by_files):  # every voxel, the borders of both grids included
        np.testing.assert_allclose(theirs, ours, atol=2e-3)
    # and the deformation is not trivial: without the displacement the result differs
    only_affine = _resample_with_itk(pair, affine)
    assert np.abs(only_affine - ours).max() > 0.05


def test_itk_reproduces_the_warp_at_the_grid_borders(pair, tmp_path):
    """A moving image that is bright up to its border and a fixed grid larger than it: the edge rules must agree
    (ITK: edge values up to half a voxel outside a grid, zero beyond; for the image and for the displacement)."""
    moving_affine = centred(np.diag([2.0, 2.0, 2.0, 1.0]), (20, 20, 20))
    bright = 1.0 + torch.rand(1, 20, 20, 20)
    moving = _save(tmp_path / "bright.nii.gz", bright[0].numpy(), moving_affine)
    fixed_affine = centred(oblique_affine(angles=(0.0, 0.0, 15.0), spacing=(1.3, 1.3, 1.3)), (36, 36, 36))
    fixed = _save(tmp_path / "big.nii.gz", phantom(fixed_affine, (36, 36, 36))[0].numpy(), fixed_affine)
    result = register_pair(
        moving, fixed, tmp_path / "out", network=SmoothVelocityNet(2.0), affine=False, spacing=4.0, size_divisor=1,
        figure=False,
    )  # fmt: skip
    ours = np.asarray(nib.load(result.files["warped"]).dataobj)
    transform = itk.transformread(str(result.files["transform"]))[0]
    theirs = _resample_with_itk({"moving": moving, "fixed": fixed}, transform)
    assert 0.1 < (ours > 0).mean() < 0.9  # the moving image's border crosses the fixed grid
    assert np.mean(np.abs(theirs - ours) > 1e-3) < 1e-3, np.abs(theirs - ours).max()
    # labels with nearest neighbour too
    lab = _save(tmp_path / "bright_seg.nii.gz", (bright[0].numpy() > 1.5).astype(np.uint8), moving_affine, np.uint8)
    result = register_pair(
        moving, fixed, tmp_path / "out2", network=SmoothVelocityNet(2.0), affine=False, spacing=4.0, size_divisor=1,
        moving_label=lab, figure=False,
    )  # fmt: skip
    ours = np.asarray(nib.load(result.files["warped_label"]).dataobj)
    nearest = itk.NearestNeighborInterpolateImageFunction[itk.Image[itk.F, 3], itk.D].New()
    theirs = _itk_array(
        itk.resample_image_filter(
            itk.imread(str(lab), itk.F), transform=transform, interpolator=nearest, use_reference_image=True,
            reference_image=itk.imread(str(fixed), itk.F),
        )
    )  # fmt: skip
    assert np.mean(theirs != ours) < 1e-3


def test_masks_restrict_the_metrics_and_overwrite_removes_stale_files(pair, tmp_path):
    fixed = nib.load(pair["fixed"])
    mask = _save(tmp_path / "mask.nii.gz", np.asarray(fixed.dataobj) > 0.3, fixed.affine, np.uint8)
    kwargs = {"spacing": 4.0, "size_divisor": 8, "affine_options": FAST_AFFINE, "figure": False}
    result = register_pair(
        pair["moving"], pair["fixed"], tmp_path / "out", network=SmoothVelocityNet(), moving_label=pair["moving_label"],
        fixed_label=pair["fixed_label"], fixed_mask=mask, **kwargs,
    )  # fmt: skip
    assert result.metrics["metrics_within"] == "fixed mask"
    unmasked = register_pair(
        pair["moving"], pair["fixed"], tmp_path / "all", network=SmoothVelocityNet(), moving_label=pair["moving_label"],
        fixed_label=pair["fixed_label"], **kwargs,
    )  # fmt: skip
    assert unmasked.metrics["metrics_within"] == "fixed image footprint"
    assert result.metrics["sd_log_jacobian"] != pytest.approx(unmasked.metrics["sd_log_jacobian"])
    assert result.metrics["dice"]["registered"]["1"] != pytest.approx(unmasked.metrics["dice"]["registered"]["1"])
    assert {"warped_label", "weight"} <= set(result.files)
    # a second run into the same folder, affine only and without labels: no file of the first run is left over
    again = register_pair(pair["moving"], pair["fixed"], tmp_path / "out", mode="affine", overwrite="true", **kwargs)
    names = {p.name for p in again.output_dir.iterdir()}
    assert "warped_label.nii.gz" not in names and "lambda.nii.gz" not in names
    assert names == {p.name for p in again.files.values()}


def test_optimise_from_identity_needs_no_model(pair, tmp_path):
    """SPR instance optimisation from identity: no network at all, λ and the objective's terms in the outputs."""
    result = register_pair(
        pair["moving"], pair["fixed"], tmp_path / "out", mode="optimise", init="identity", spacing=4.0,
        size_divisor=8, affine_options=FAST_AFFINE, moving_label=pair["moving_label"], fixed_label=pair["fixed_label"],
        optimise_options={"levels": (2, 1), "steps": (20, 10), "learning_rate": 0.1, "lambda_max": 1.0,
                          "prior_param": 1.1}, figure=False,
    )  # fmt: skip
    info = result.report["deformable"]
    assert info["init"] == "identity" and len(info["history"]) == 30
    fine = [h["loss"] for h in info["history"] if h["level"] == 1]
    assert fine[-1] < fine[0]
    assert {"similarity", "diffusion", "prior"} <= set(info["history"][-1])
    assert "weight" in result.files and "lambda" in result.metrics
    assert result.metrics["ndv_percent"] < 0.1
    # the pair differs by an affine map only: the deformable stage has nothing to add here, it must just not break it
    assert result.metrics["dice"]["registered"]["mean"] > 0.8
    # from a network's prediction (its velocity and λ as the start)
    warm = register_pair(
        pair["moving"], pair["fixed"], tmp_path / "warm", mode="optimise", network=SmoothVelocityNet(0.5),
        spacing=4.0, size_divisor=8, affine_options=FAST_AFFINE, optimise_options={"levels": (1,), "steps": (3,)},
        figure=False,
    )  # fmt: skip
    assert warm.report["deformable"]["init"] == "network" and len(warm.report["deformable"]["history"]) == 3


def test_inverse_composes_to_identity(registered):
    forward = itk.transformread(str(registered.files["transform"]))[0]
    inverse = itk.transformread(str(registered.files["inverse_transform"]))[0]
    rng = np.random.default_rng(0)
    index = rng.uniform(6, np.array(FIXED_SHAPE) - 6, size=(50, 3))
    errors, moves = [], []
    for p in index @ FIXED_AFFINE[:3, :3].T + FIXED_AFFINE[:3, 3]:
        p_lps = (RAS_TO_LPS[:3, :3] @ p).tolist()
        q = forward.TransformPoint(p_lps)
        back = np.array(inverse.TransformPoint(q))
        errors.append(np.linalg.norm(back - p_lps))
        moves.append(np.linalg.norm(np.array(q) - p_lps))
    assert max(errors) < 0.25 < min(moves), (max(errors), min(moves))  # mm; working grid 4 mm


def test_a_las_copy_gives_the_same_result(pair, tmp_path):
    """The working grid comes from world space: a LAS (or any axis-flipped) header of the same image changes nothing."""
    fixed_affine = centred(np.diag([2.0, 2.0, 2.0, 1.0]), (40, 44, 36))
    fixed = phantom(fixed_affine, (40, 44, 36))[0].numpy()
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, fixed.shape[0] - 1
    las_affine = fixed_affine @ flip
    assert nib.aff2axcodes(las_affine) == ("L", "A", "S")
    ras = _save(tmp_path / "ras.nii.gz", fixed, fixed_affine)
    las = _save(tmp_path / "las.nii.gz", fixed[::-1], las_affine)
    kwargs = {"network": SmoothVelocityNet(), "spacing": 4.0, "size_divisor": 8, "affine_options": FAST_AFFINE}
    kwargs["figure"] = False
    a = register_pair(pair["moving"], ras, tmp_path / "a", **kwargs)
    b = register_pair(pair["moving"], las, tmp_path / "b", **kwargs)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)
    for name in ("warped", "jacobian", "weight"):
        wa = np.asarray(nib.load(a.files[name]).dataobj)
        wb = np.asarray(nib.load(b.files[name]).dataobj)
        np.testing.assert_allclose(wb[::-1], wa, atol=1e-5)
    assert a.metrics["sd_log_jacobian"] == pytest.approx(b.metrics["sd_log_jacobian"], abs=1e-6)


def test_an_mha_copy_in_lps_gives_the_same_result(pair, tmp_path):
    """ITK formats go through MONAI's ITK reader (LPS headers converted to RAS): the same image written as MHA is
    loaded onto the same world grid, and resampling by the headers gives the same output as from the NIfTI."""
    from svreg_monai.apps import load_checked_image
    from svreg_monai.utils.itk_io import itk_image, write_itk_image

    data = np.asarray(nib.load(pair["fixed"]).dataobj)
    mha = write_itk_image(itk_image(data[None].astype(np.float64), FIXED_AFFINE), tmp_path / "fixed.mha")
    loaded = load_checked_image(mha, "fixed image")
    np.testing.assert_allclose(np.asarray(loaded.affine), FIXED_AFFINE, atol=1e-5)
    np.testing.assert_allclose(loaded[0].numpy(), data, atol=1e-6)
    kwargs = {"mode": "affine", "affine": False, "spacing": 4.0, "size_divisor": 8, "figure": False}
    a = register_pair(pair["moving"], pair["fixed"], tmp_path / "a", **kwargs)
    b = register_pair(pair["moving"], mha, tmp_path / "b", **kwargs)
    np.testing.assert_allclose(nib.load(b.files["warped"]).affine, FIXED_AFFINE, atol=1e-4)
    wa, wb = (np.asarray(nib.load(r.files["warped"]).dataobj) for r in (a, b))
    assert wa.max() > 0.1
    np.testing.assert_allclose(wb, wa, atol=1e-4)


def test_network_mode_at_several_sizes_with_one_checkpoint(pair, tmp_path):
    """One TM-SPR checkpoint (trained window 1) runs on working grids of different multiples of 32."""
    from svreg_monai.apps import load_network
    from svreg_monai.apps.bundle_tools import checkpoint_window_size

    net = TransMorphTVFSPR(img_size=(32, 32, 32), embed_dim=12, depths=(1, 1, 1), num_heads=(2, 2, 2), time_steps=2)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    shapes = []
    for spacing in (4.0, 2.0):  # working grids 32^3 and 64 x 64 x 32-ish
        window = checkpoint_window_size(tmp_path / "model.pt", [2, 2, 2])
        model = TransMorphTVFSPR(
            img_size=(64, 64, 64), window_size=window, embed_dim=12, depths=(1, 1, 1), num_heads=(2, 2, 2), time_steps=2
        )
        load_network(model, tmp_path / "model.pt")
        result = register_pair(
            pair["moving"], pair["fixed"], tmp_path / f"out{spacing}", network=model, spacing=spacing,
            affine_options=FAST_AFFINE, figure=False,
        )  # fmt: skip
        shapes.append(tuple(result.report["working_grid"]["shape"]))
        assert all(s % 32 == 0 for s in shapes[-1])
        assert np.isfinite(np.asarray(nib.load(result.files["warped"]).dataobj)).all()
        assert "lambda" in result.metrics
    assert shapes[0] != shapes[1]


# ------------------------------------------------------------------------------------------------------ bad input


def _bad_files(root: Path) -> dict[str, Path]:
    good = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)
    eye = np.eye(4)
    text = root / "text.nii.gz"
    text.write_text("not an image")
    nan = good.copy()
    nan[3, 3, 3] = np.nan
    degenerate = _save(root / "degenerate.nii", good, eye)  # then zero its second sform row (nibabel refuses to)
    raw = bytearray(degenerate.read_bytes())
    raw[252:254] = np.int16(0).tobytes()  # qform_code: unknown, so the sform is the affine
    raw[254:256] = np.int16(1).tobytes()  # sform_code: scanner
    raw[296:312] = np.zeros(4, dtype=np.float32).tobytes()  # srow_y
    degenerate.write_bytes(bytes(raw))
    forms = nib.Nifti1Image(good, None)
    shifted = np.eye(4)
    shifted[0, 3] = 10.0
    forms.set_qform(eye, code=1)
    forms.set_sform(shifted, code=2)  # as after some processing tools: ITK would read the qform, nibabel the sform
    nib.save(forms, str(root / "forms.nii.gz"))
    return {
        "forms": root / "forms.nii.gz",
        "good": _save(root / "good.nii.gz", good, eye),
        "text": text,
        "2d": _save(root / "flat.nii.gz", good[:, :, 0], eye),
        "4d": _save(root / "series.nii.gz", np.stack([good, good], -1), eye),
        "nan": _save(root / "nan.nii.gz", nan, eye),
        "constant": _save(root / "constant.nii.gz", np.ones_like(good), eye),
        "float_labels": _save(root / "float_seg.nii.gz", good, eye),
        "small_mask": _save(root / "small_mask.nii.gz", np.ones((10, 12, 12)), eye),
        "degenerate": degenerate,
    }


BAD_INPUTS = [
    ({"moving": "missing"}, FileNotFoundError, "moving image .*missing.nii.gz.* does not exist"),
    ({"moving": "text"}, ValueError, "moving image .*text.nii.gz.* could not be read"),
    ({"fixed": "2d"}, ValueError, "fixed image .*flat.nii.gz.* must be a 3D image"),
    ({"moving": "4d"}, ValueError, "moving image .*series.nii.gz.* must have one channel/volume, got 2"),
    ({"fixed": "nan"}, ValueError, "fixed image .*nan.nii.gz.* has 1 NaN or Inf voxels"),
    ({"moving": "constant"}, ValueError, "moving image .*constant.nii.gz.* is constant"),
    ({"moving_label": "float_labels"}, ValueError, "moving label .*float_seg.nii.gz.* non-negative integer labels"),
    ({"fixed_mask": "small_mask"}, ValueError, "fixed mask .*small_mask.nii.gz.* has shape \\(10, 12, 12\\)"),
    ({"fixed": "degenerate"}, ValueError, "affine \\(header\\) of fixed image .*degenerate.nii.* is degenerate"),
    ({"fixed": "forms"}, ValueError, "fixed image .*forms.nii.gz.* has a qform and an sform that disagree"),
    ({"output_dir": "under_a_file"}, ValueError, "output_dir .*under_a_file.* cannot be written"),
    ({"mode": "network"}, ValueError, "mode 'network' needs a network"),
    ({"spacing": 0}, ValueError, "spacing must be a positive"),
    ({"num_threads": 0}, ValueError, "num_threads"),
    ({"mode": "optimise"}, ValueError, "init 'network' needs a network"),
    ({"mode": "optimise", "init": "identity", "optimise_options": {"rate": 1}}, ValueError, "unknown optimise_options"),
    ({"overwrite": "maybe"}, ValueError, "overwrite must be true or false, got 'maybe'"),
    ({"affine_options": {"steps": 3}}, ValueError, "unknown affine_options \\['steps'\\]"),
    ({"mode": "network", "network": "net", "codes": [0.5, 1.5]}, ValueError, "takes none|outside"),
]


@pytest.mark.parametrize("change, error, match", BAD_INPUTS)
def test_bad_input_names_the_file_and_leaves_nothing(tmp_path, change, error, match):
    files = _bad_files(tmp_path)
    (tmp_path / "a_file").write_text("")
    kwargs = {"moving": files["good"], "fixed": files["good"], "output_dir": tmp_path / "out", "mode": "affine"}
    for key, value in change.items():
        if value == "missing":
            kwargs[key] = tmp_path / "missing.nii.gz"
        elif value == "under_a_file":
            kwargs[key] = tmp_path / "a_file" / "under_a_file"
        elif isinstance(value, str) and value in files:
            kwargs[key] = files[value]
        elif value == "net":
            kwargs[key] = SmoothVelocityNet()
        else:
            kwargs[key] = value
    with pytest.raises(error, match=match):
        register_pair(**kwargs, affine=False, figure=False)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())


def test_existing_outputs_need_overwrite(tmp_path):
    files = _bad_files(tmp_path)
    kwargs = {"mode": "affine", "affine": False, "figure": False, "spacing": 4.0, "size_divisor": 4}
    register_pair(files["good"], files["good"], tmp_path / "out", **kwargs)
    with pytest.raises(ValueError, match="already holds"):
        register_pair(files["good"], files["good"], tmp_path / "out", **kwargs)
    result = register_pair(files["good"], files["good"], tmp_path / "out", overwrite=True, **kwargs)
    assert not [p for p in result.output_dir.iterdir() if p.name.startswith(".")]  # no staging folder left
