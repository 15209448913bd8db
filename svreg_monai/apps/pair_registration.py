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
"""Register one pair of image files and write world-space results that ITK, ANTs, SimpleITK and Slicer apply.

Pipeline of :func:`register_pair` (every stage timed in the report):

1. **Load and check** the moving and fixed images (and optional moving/fixed labels and masks) with MONAI's
   ``LoadImage`` (NIfTI, MHA/MHD, NRRD, ...): 3D, one channel, finite, not constant, a usable affine; labels
   integer-valued on their image's grid; masks on their image's grid. Every problem is a ``ValueError`` or
   ``FileNotFoundError`` naming the file, raised before any output is written.
2. **Intensities**: each image (times its mask, when given) is clipped to its ``intensity_percentiles`` and scaled
   to [0, 1] (MONAI ``ScaleIntensityRangePercentiles``), so one bright voxel cannot squash the contrast.
3. **Working grid**: the fixed image in the orientation closest to RAS (``Orientation``), resampled to
   ``spacing`` mm (``Spacing``) and padded to a multiple of ``size_divisor`` (``DivisiblePad``): the fixed
   image's world box at the model's voxel size. A LAS or LPS copy of the same image gives the same grid.
4. **Affine pre-alignment** (``affine=True``): :func:`~svreg_monai.registration.affine_register` in world
   coordinates, from the centres of mass; otherwise the identity (the headers' world alignment).
5. **Deformable stage** (``mode``): ``"network"`` runs the trained network on the working grid (the moving image
   resampled there through the affine, in one interpolation); ``"affine"`` stops after step 4. The stage returns the
   forward and inverse displacements (working-grid voxels) and, for SPR models, the λ map.
6. **Outputs** on the fixed image's *original* grid, each moving voxel interpolated once through the composite
   transform, plus the transforms as ITK files; all staged in a hidden folder inside ``output_dir`` and moved into
   place only when every file is complete.

Transforms are pull-back maps from fixed points to moving points (ITK's convention): ``warped(p) = moving(T(p))``
with ``T = affine ∘ (id + displacement)``. The ITK files are in LPS millimetres; everything in the report and the
NIfTI outputs uses the RAS world of the NIfTI headers (see :mod:`svreg_monai.utils.world`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import platform
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.transforms import DivisiblePad, LoadImage, Orientation, ScaleIntensityRangePercentiles, Spacing
from monai.utils import StrEnum, look_up_option

from svreg_monai.metrics.functional import jacobian_determinant, non_diffeomorphic_measures, sd_log_jacobian
from svreg_monai.metrics.labels import dice_per_structure
from svreg_monai.priors import HyperparameterSpace
from svreg_monai.registration.affine import affine_register
from svreg_monai.registration.deformable import optimize_spr, summarize_history
from svreg_monai.utils.io import save_nifti, write_json
from svreg_monai.utils.itk_io import (
    itk_affine_transform,
    itk_composite_transform,
    itk_displacement_transform,
    itk_image,
    write_itk_image,
    write_itk_transform,
)
from svreg_monai.utils.validation import check_flag, check_positive_int
from svreg_monai.utils.world import (
    check_affine,
    ddf_to_world,
    resample_through,
    sample_at_world_points,
    transform_points,
    world_coordinates,
)

__all__ = [
    "DeformableResult",
    "NetworkStage",
    "OptimisationStage",
    "PairRegistrationResult",
    "RegistrationMode",
    "load_checked_image",
    "load_network",
    "load_state_dict",
    "register_pair",
    "summarize_result",
]

OUTPUT_FILES: dict[str, str] = {
    "warped": "warped.nii.gz",
    "warped_label": "warped_label.nii.gz",
    "affine": "affine.mat",
    "warp": "warp.nii.gz",
    "inverse_warp": "inverse_warp.nii.gz",
    "transform": "transform.h5",
    "inverse_transform": "inverse_transform.h5",
    "weight": "lambda.nii.gz",
    "jacobian": "jacobian.nii.gz",
    "figure": "figure.png",
    "report": "report.json",
}


class RegistrationMode(StrEnum):
    """The deformable stage of :func:`register_pair`."""

    NETWORK = "network"
    OPTIMISE = "optimise"
    AFFINE = "affine"


@dataclass
class DeformableResult:
    """What a deformable stage returns, on the working grid.

    Attributes:
        ddf: ``(1, 3, *S)`` displacement in working-grid voxels (pull-back, fixed -> pre-aligned moving).
        inverse_ddf: ``(1, 3, *S)`` displacement of the inverse map (pre-aligned moving -> fixed).
        weight: ``(1, 1, *S)`` regularisation weight λ(x), or None for models without one.
        info: anything the stage wants in the report (e.g. hyperparameter values, the objective per step).
    """

    ddf: torch.Tensor
    inverse_ddf: torch.Tensor
    weight: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


class NetworkStage:
    """The deformable stage ``"network"``: one forward pass of a trained registration network.

    Args:
        network: a network returning a :class:`~svreg_monai.networks.nets.outputs.RegistrationOutput` with an
            ``inverse_ddf(velocity, spatial_size)`` method (TM-SPR, the hyper TM-SPR and
            ``SpatiallyVaryingRegistrationNet`` have one).
        codes: ``(2,)`` hyperparameter codes in [0, 1] for a hyper-conditioned network (required for one, refused
            otherwise).
        device: where to run it.
        extrapolate: accept codes outside [0, 1] (outside the range the hyper network was trained on).
    """

    def __init__(
        self,
        network: nn.Module,
        codes: Sequence[float] | None = None,
        device: str | torch.device = "cpu",
        extrapolate: bool = False,
    ):
        if not isinstance(network, nn.Module):
            raise ValueError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        if not callable(getattr(network, "inverse_ddf", None)):
            raise ValueError(
                f"network {type(network).__name__} has no inverse_ddf(velocity, spatial_size) method, which the "
                "inverse transform needs (TransMorphTVFSPR, HyperTransMorphTVFSPR and SpatiallyVaryingRegistrationNet "
                "have one)."
            )
        hyper = isinstance(getattr(network, "space", None), HyperparameterSpace)
        if hyper and codes is None:
            raise ValueError("the network is hyper-conditioned: give its codes (b, r) in [0, 1], e.g. [0.5, 0.5].")
        if not hyper and codes is not None:
            raise ValueError(f"codes {list(codes)} were given but network {type(network).__name__} takes none.")
        self.extrapolate = check_flag(extrapolate, "extrapolate")
        if codes is not None:
            values = torch.as_tensor(codes, dtype=torch.float32).reshape(-1)
            if values.numel() != 2 or not torch.isfinite(values).all():
                raise ValueError(f"codes must be two finite numbers (b, r), got {codes!r}.")
            if not self.extrapolate and ((values < 0) | (values > 1)).any():
                raise ValueError(
                    f"codes {values.tolist()} are outside [0, 1], the range the hyper network was trained on; "
                    "pass extrapolate=True to use them anyway."
                )
        self.network = network
        self.device = torch.device(device)
        self.codes = None if codes is None else values.reshape(1, 2)

    @torch.no_grad()
    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor, keep_velocity: bool = False) -> DeformableResult:
        """Register ``(1, 1, *S)`` working-grid images (normalised to [0, 1]); returns working-grid displacements
        (and the network's velocity in ``info["velocity"]`` with ``keep_velocity``, for a warm start)."""
        self.network.eval().to(self.device)
        moving, fixed = moving.to(self.device), fixed.to(self.device)
        info: dict[str, Any] = {"network": type(self.network).__name__}
        if self.codes is not None:
            codes = self.codes.to(self.device)
            out = self.network(moving, fixed, codes, extrapolate=self.extrapolate)
            info["codes"] = self.codes[0].tolist()
            space = self.network.space  # type: ignore[union-attr]
            values = space.to_values(codes, extrapolate=self.extrapolate)
            info["prior"] = space.prior.name
            info["hyperparameters"] = {name: float(values[name][0]) for name in space.names}
        else:
            out = self.network(moving, fixed)
        inverse = self.network.inverse_ddf(out.velocity, tuple(fixed.shape[2:]))  # type: ignore[operator]
        if keep_velocity:
            info["velocity"] = out.velocity.float()
        weight = getattr(out, "weight", None)
        return DeformableResult(
            ddf=out.ddf.float().cpu(),
            inverse_ddf=inverse.float().cpu(),
            weight=None if weight is None else weight.float().cpu(),
            info=info,
        )


class OptimisationStage:
    """The deformable stage ``"optimise"``: SPR instance optimisation of one pair (:func:`optimize_spr`).

    Starts from identity (``network=None``) or from a network's prediction (its velocity and λ: the network's
    forward pass through :class:`NetworkStage` first). With a hyper-conditioned network, λ_max and the prior
    parameter come from its codes unless ``options`` sets them.

    Args:
        network: a registration network for the warm start, or None (identity start, no trained model needed).
        codes: hyper codes, as for :class:`NetworkStage`.
        device: where to run.
        extrapolate: accept hyper codes outside [0, 1].
        options: keyword arguments of :func:`~svreg_monai.registration.optimize_spr` (levels, steps,
            learning_rate, lambda_max, prior, prior_param, kernel_size, learn_weight ...).
        network_weight: start λ from the network's λ map too (else from ``options["initial_weight"]``, 0.5). Off by
            default: a λ near 1 sits in the sigmoid's flat end and barely moves (the shipped weights' λ is about 1
            everywhere); measured on a real pair, Dice 0.794 with it against 0.811 without.
    """

    def __init__(
        self,
        network: nn.Module | None = None,
        codes: Sequence[float] | None = None,
        device: str | torch.device = "cpu",
        extrapolate: bool = False,
        options: Mapping[str, Any] | None = None,
        network_weight: bool = False,
    ) -> None:
        self.options = dict(options or {})
        self.network_weight = check_flag(network_weight, "network_weight")
        allowed = set(inspect.signature(optimize_spr).parameters) - {
            "moving", "fixed", "initial_velocity", "initial_weight", "progress",
        }  # fmt: skip
        unknown = set(self.options) - allowed
        if unknown:
            raise ValueError(f"unknown optimise_options {sorted(unknown)}; allowed: {sorted(allowed)}.")
        self.network_stage = None if network is None else NetworkStage(network, codes, device, extrapolate)
        if network is None and codes is not None:
            raise ValueError("codes need a hyper network; the identity start takes lambda_max/prior_param options.")
        self.device = torch.device(device)

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> DeformableResult:
        """Register ``(1, 1, *S)`` working-grid images; returns working-grid displacements, λ and the history."""
        options = dict(self.options)
        info: dict[str, Any] = {"init": "identity" if self.network_stage is None else "network"}
        initial_velocity, initial_weight = None, options.pop("initial_weight", 0.5)
        if self.network_stage is not None:
            start = self.network_stage(moving, fixed, keep_velocity=True)
            info["network"] = start.info
            initial_velocity = start.info.pop("velocity")
            if self.network_weight and start.weight is not None:
                initial_weight = start.weight
            values = start.info.get("hyperparameters")
            if values:  # a hyper network: optimise with its prior at its setting (prior parameter first)
                prior_param, lambda_max = values.values()
                options.setdefault("prior", start.info["prior"])
                options.setdefault("lambda_max", lambda_max)
                options.setdefault("prior_param", prior_param)
        result = optimize_spr(
            moving.to(self.device),
            fixed.to(self.device),
            initial_velocity=None if initial_velocity is None else initial_velocity.to(self.device),
            initial_weight=initial_weight.to(self.device)
            if isinstance(initial_weight, torch.Tensor)
            else initial_weight,
            progress=True,
            **options,
        )
        info["options"] = dict(options)
        info["objective"] = summarize_history(result.history)
        info["history"] = result.history
        return DeformableResult(result.ddf.cpu(), result.inverse_ddf.cpu(), result.weight.cpu(), info)


@dataclass
class PairRegistrationResult:
    """What :func:`register_pair` returns.

    Attributes:
        output_dir: the folder the files were written to.
        files: output name -> path (see the module docstring; names absent when not written).
        affine: ``(4, 4)`` RAS world map fixed -> moving of the affine stage.
        report: the content of ``report.json`` (parameters, versions, timings, metrics).
    """

    output_dir: Path
    files: dict[str, Path]
    affine: np.ndarray
    report: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        """The report's metrics (NDV, NDP, SDlogJ, Dice ...)."""
        return self.report["metrics"]


def summarize_result(result: PairRegistrationResult) -> str:
    """A short text summary of a :class:`PairRegistrationResult`: output folder, times, Jacobian metrics, Dice."""
    report = result.report
    m = report["metrics"]
    lines = [f"outputs in {result.output_dir}: {', '.join(sorted(p.name for p in result.files.values()))}"]
    lines.append("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings_s"].items()))
    lines.append(
        f"NDV {m['ndv_percent']:.4f} %, NDP {m['ndp_percent']:.4f} %, SDlogJ {m['sd_log_jacobian']:.4f} "
        f"({m['metrics_within']})"
    )
    if "lambda" in m:
        lam = m["lambda"]
        lines.append(f"lambda p05 {lam['p05']:.3f}, median {lam['median']:.3f}, p95 {lam['p95']:.3f}")
    if "dice" in m:
        lines.append("mean Dice: " + ", ".join(f"{k} {v['mean']:.4f}" for k, v in m["dice"].items()))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- loading


def load_state_dict(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a network's state dict from a file, on the CPU.

    Args:
        checkpoint: a state dict file, or a dict holding one under ``"model"`` or ``"network"`` (the bundle's
            ``CheckpointSaver`` format).

    Raises:
        FileNotFoundError: when ``checkpoint`` does not exist.
        ValueError: when it cannot be read or holds no state dict (the message names the file).
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {str(path)!r} could not be read: {type(e).__name__}: {e}") from e
    for key in ("model", "network"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {str(path)!r} holds no state dict (a mapping of names to tensors).")
    return state


def load_network(network: nn.Module, checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load trained weights into ``network`` (strictly) and return it in eval mode on ``device``.

    Args:
        network: the network built with the checkpoint's configuration (the window size is read from the
            checkpoint by the bundle configs, so any input size that is a multiple of 32 works).
        checkpoint: a state dict file, or a dict holding one under ``"model"`` or ``"network"`` (the bundle's
            ``CheckpointSaver`` format).
        device: where to put the network.

    Raises:
        FileNotFoundError: when ``checkpoint`` does not exist.
        ValueError: when it cannot be read or does not fit ``network`` (the message names the file).
    """
    state = load_state_dict(checkpoint)
    try:
        network.load_state_dict(state)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"checkpoint {str(checkpoint)!r} does not fit {type(network).__name__}: {e}") from e
    return network.to(device).eval()


def load_checked_image(path: str | os.PathLike, role: str, kind: str = "image") -> MetaTensor:
    """Load a 3D single-channel image file with MONAI's ``LoadImage`` and check it.

    Args:
        path: the file (NIfTI, MHA/MHD, NRRD or anything MONAI's readers open).
        role: what it is, for messages (``"moving image"``, ``"fixed mask"``...).
        kind: ``"image"`` (finite and not constant), ``"label"`` (non-negative integers) or ``"mask"`` (finite).

    Returns:
        ``(1, X, Y, Z)`` float32 ``MetaTensor`` with its RAS ``affine``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when it cannot be read or breaks one of the rules above (the message names the file).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{role} {str(path)!r} does not exist (or is not a file).")
    try:
        image = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except Exception as e:  # the readers raise many types; name the file once
        raise ValueError(f"{role} {str(path)!r} could not be read as an image: {type(e).__name__}: {e}") from e
    shape = tuple(image.shape)
    if len(shape) == 5 and shape[-1] == 1:  # (C, X, Y, Z, 1) from a header with a trailing singleton dimension
        image = image[..., 0]
        shape = tuple(image.shape)
    if len(shape) != 4:
        raise ValueError(
            f"{role} {str(path)!r} must be a 3D image, got array shape {shape[1:]} (channel-first {shape}); "
            "2D slices and 4D series are not supported."
        )
    if shape[0] != 1:
        raise ValueError(
            f"{role} {str(path)!r} must have one channel/volume, got {shape[0]} (shape {shape[1:]} + {shape[0]}); "
            "select one volume first."
        )
    if min(shape[1:]) < 2:
        raise ValueError(f"{role} {str(path)!r} has a spatial axis of size < 2: {shape[1:]}.")
    _check_nifti_forms(path, role)
    check_affine(image.affine, f"the affine (header) of {role} {str(path)!r}", spatial_dims=3)
    data = image.as_tensor()
    if kind == "label":
        if not torch.isfinite(data).all() or (data != torch.round(data)).any() or (data < 0).any():
            bad = data[~torch.isfinite(data) | (data != torch.round(data)) | (data < 0)]
            raise ValueError(
                f"{role} {str(path)!r} must hold non-negative integer labels, found e.g. {bad[:5].tolist()}."
            )
    elif not torch.isfinite(data).all():
        count = int((~torch.isfinite(data)).sum())
        raise ValueError(f"{role} {str(path)!r} has {count} NaN or Inf voxels; fix or mask them first.")
    if kind == "image" and float(data.max()) <= float(data.min()):
        raise ValueError(f"{role} {str(path)!r} is constant (every voxel {float(data.min())}); nothing to register.")
    if kind == "mask" and not (data > 0).any():
        raise ValueError(f"{role} {str(path)!r} is empty (no voxel > 0).")
    out = image.float()
    out.meta["filename_or_obj"] = str(path)
    return out


def _check_nifti_forms(path: Path, role: str) -> None:
    """A NIfTI whose qform and sform are both set but disagree is read differently by nibabel/MONAI (sform) and by
    ITK/ANTs (qform): our outputs and theirs would not match. Stop and say how to fix the header."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    import nibabel as nib

    try:
        header = nib.load(str(path)).header
    except Exception:  # not a NIfTI after all: MONAI read it with another reader
        return
    if int(header["qform_code"]) > 0 and int(header["sform_code"]) > 0:
        qform, sform = header.get_qform(), header.get_sform()
        if not np.allclose(qform, sform, atol=1e-3):
            raise ValueError(
                f"{role} {str(path)!r} has a qform and an sform that disagree (nibabel and MONAI use the sform, ITK "
                f"and ANTs the qform, so the tools would place the image differently):\nqform\n{qform}\nsform\n"
                f"{sform}\nmake them agree first, e.g. `fslorient -copysform2qform` or nibabel's "
                "`img.set_qform(img.get_sform(), code=1)`."
            )


def _check_on_grid(x: MetaTensor, image: MetaTensor, role: str, image_role: str) -> None:
    if tuple(x.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(
            f"{role} {x.meta['filename_or_obj']!r} has shape {tuple(x.shape[1:])} but the {image_role} "
            f"{image.meta['filename_or_obj']!r} has {tuple(image.shape[1:])}; they must share one grid."
        )
    a, b = np.asarray(x.affine, dtype=np.float64), np.asarray(image.affine, dtype=np.float64)
    if not np.allclose(a, b, atol=1e-3 * max(1.0, float(np.abs(b).max()))):
        raise ValueError(
            f"{role} {x.meta['filename_or_obj']!r} and the {image_role} {image.meta['filename_or_obj']!r} have the "
            f"same shape but different affines:\n{a}\nvs\n{b}\nresample the {role} onto the {image_role} first."
        )


# --------------------------------------------------------------------------------------------------- output folder


@contextlib.contextmanager
def _staging(output_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden folder inside ``output_dir`` to write into; its files are moved into place only on success."""
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        stage = output_dir / f".svreg-partial-{os.getpid()}-{secrets.token_hex(4)}"
        stage.mkdir()
    except OSError as e:
        raise ValueError(f"output_dir {str(output_dir)!r} cannot be written: {e}") from e
    if not overwrite:
        clash = [n for n in OUTPUT_FILES.values() if (output_dir / n).exists()]
        if clash:
            shutil.rmtree(stage, ignore_errors=True)
            raise ValueError(
                f"output_dir {str(output_dir)!r} already holds {clash}; choose another folder or pass overwrite=True."
            )
    try:
        yield stage
        written = {item.name for item in stage.iterdir()}
        for name in OUTPUT_FILES.values():  # outputs of an earlier run that this one does not write
            if name not in written and (output_dir / name).exists():
                (output_dir / name).unlink()
        report = OUTPUT_FILES["report"]
        for item in sorted(stage.iterdir(), key=lambda p: p.name == report):  # the report last: the run's end mark
            os.replace(item, output_dir / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------------------------ the pipeline


def _normalise(image: MetaTensor, mask: MetaTensor | None, percentiles: tuple[float, float]) -> MetaTensor:
    x = image if mask is None else image * (mask > 0)
    return ScaleIntensityRangePercentiles(percentiles[0], percentiles[1], 0.0, 1.0, clip=True)(x)


def _working_grid(fixed: MetaTensor, spacing: float, size_divisor: int) -> Any:
    grid = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(fixed)
    grid = Spacing(pixdim=(spacing,) * 3, mode="bilinear")(grid)
    return DivisiblePad(k=size_divisor, method="symmetric")(grid)


def _dice(
    pred: torch.Tensor, target: torch.Tensor, labels: Sequence[int], mask: torch.Tensor | None
) -> dict[str, float]:
    """Dice per label value (:func:`~svreg_monai.metrics.dice_per_structure`) and their mean."""
    out = {str(v): dice_per_structure((pred == v)[None, None], (target == v)[None, None], mask)[0] for v in labels}
    values = [d for d in out.values() if not np.isnan(d)]
    out["mean"] = float(np.mean(values)) if values else float("nan")
    return out


def _versions() -> dict[str, str]:
    import itk
    import monai
    import nibabel

    import svreg_monai

    return {
        "svreg_monai": svreg_monai.__version__,
        "monai": monai.__version__,
        "torch": torch.__version__,
        "itk": itk.Version.GetITKVersion(),
        "nibabel": nibabel.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def register_pair(
    moving: str | os.PathLike,
    fixed: str | os.PathLike,
    output_dir: str | os.PathLike,
    network: nn.Module | None = None,
    mode: RegistrationMode | str = RegistrationMode.NETWORK,
    moving_label: str | os.PathLike | None = None,
    fixed_label: str | os.PathLike | None = None,
    moving_mask: str | os.PathLike | None = None,
    fixed_mask: str | os.PathLike | None = None,
    codes: Sequence[float] | None = None,
    extrapolate: bool = False,
    init: str = "network",
    optimise_options: Mapping[str, Any] | None = None,
    affine: bool = True,
    spacing: float = 2.0,
    size_divisor: int = 32,
    intensity_percentiles: Sequence[float] = (0.5, 99.5),
    affine_options: Mapping[str, Any] | None = None,
    num_threads: int | None = None,
    device: str | torch.device = "cpu",
    figure: bool = True,
    overwrite: bool = False,
) -> PairRegistrationResult:
    """Register ``moving`` to ``fixed`` and write warped images, ITK transforms, λ, Jacobian, figure and report.

    See the module docstring for the stages and conventions. Outputs (in ``output_dir``):
    ``warped.nii.gz`` (moving on the fixed image's original grid and affine), ``warped_label.nii.gz`` (with
    ``moving_label``, nearest neighbour), ``affine.mat`` (ITK/ANTs affine, fixed -> moving points, LPS),
    ``warp.nii.gz`` and ``inverse_warp.nii.gz`` (ITK/ANTs displacement fields in LPS mm on the working grid),
    ``transform.h5`` (composite: warp then affine; ``antsApplyTransforms -t transform.h5`` and ITK's
    ``ResampleImageFilter`` reproduce ``warped.nii.gz``), ``inverse_transform.h5`` (maps moving points to fixed
    points: resamples the fixed image onto the moving grid), ``lambda.nii.gz`` and ``jacobian.nii.gz`` (λ(x) and
    ``det(I + ∇u)`` of the deformable part, on the fixed grid), ``figure.png``, ``report.json``.

    Args:
        moving: moving image file.
        fixed: fixed image file.
        output_dir: folder for the outputs (created; nothing is written elsewhere).
        network: the trained registration network, required for ``mode="network"``.
        mode: the deformable stage: ``"network"`` (the trained network), ``"optimise"`` (SPR instance optimisation,
            from the network's prediction or from identity, see ``init``) or ``"affine"`` (affine only).
        moving_label: label map of the moving image (same grid), warped with nearest neighbour.
        fixed_label: label map of the fixed image (same grid): with ``moving_label``, Dice is reported.
        moving_mask: brain mask of the moving image (same grid): intensities outside it are set to 0.
        fixed_mask: brain mask of the fixed image: intensities outside it are set to 0, and Dice, NDV, NDP and
            SDlogJ are computed inside it (without it: Dice on the whole fixed grid, the Jacobian measures on the
            fixed image's footprint in the working grid, padding excluded). Give masks when the images are not
            skull-stripped: the shipped brain model was trained on skull-stripped brains.
        codes: ``(b, r)`` codes in [0, 1] of a hyper-conditioned network.
        extrapolate: accept codes outside [0, 1].
        init: start of ``mode="optimise"``: ``"network"`` (the network's prediction) or ``"identity"`` (no trained
            model needed).
        optimise_options: keyword arguments of :func:`~svreg_monai.registration.optimize_spr` for
            ``mode="optimise"`` (levels, steps, learning_rate, lambda_max, prior, prior_param, kernel_size, ...).
        affine: run the affine pre-alignment (else the images are aligned by their headers only).
        spacing: working voxel size in mm (the model's training resolution: 2 for the shipped brain model).
        size_divisor: the working grid is padded to a multiple of it per axis (32 for TM-SPR).
        intensity_percentiles: lower and upper percentiles clipped to 0 and 1.
        affine_options: keyword arguments of :func:`~svreg_monai.registration.affine_register`.
        num_threads: torch CPU threads for this call (restored afterwards); None keeps the current setting.
        device: torch device of the deformable stage.
        figure: write ``figure.png``.
        overwrite: replace outputs already in ``output_dir`` (else such a folder is an error).

    Returns:
        :class:`PairRegistrationResult`.

    Raises:
        FileNotFoundError: when an input file does not exist.
        ValueError: for unreadable or invalid inputs, bad options, or an output folder that cannot be written;
            all found before any registration work, and nothing is left in ``output_dir``.
    """
    started = time.perf_counter()
    for value, name in ((moving, "moving"), (fixed, "fixed"), (output_dir, "output_dir")):
        if value is None or str(value) == "":
            raise ValueError(f"{name} is required (bundle: --{name} PATH), got {value!r}.")
    mode = look_up_option(str(mode), RegistrationMode)
    affine, figure, overwrite = (
        check_flag(v, n) for v, n in ((affine, "affine"), (figure, "figure"), (overwrite, "overwrite"))
    )
    if mode == RegistrationMode.NETWORK and network is None:
        raise ValueError(
            "mode 'network' needs a network (the trained model); use mode='optimise' with init='identity' or "
            "mode='affine' without one."
        )
    if isinstance(spacing, bool) or not (isinstance(spacing, (int, float)) and spacing > 0):
        raise ValueError(f"spacing must be a positive number of millimetres, got {spacing!r}.")
    check_positive_int(size_divisor, "size_divisor")
    lo, hi = (float(p) for p in intensity_percentiles)
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"intensity_percentiles must be 0 <= lower < upper <= 100, got {list(intensity_percentiles)}.")
    check_positive_int(num_threads, "num_threads", allow_none=True)
    affine_options = dict(affine_options or {})
    allowed = set(inspect.signature(affine_register).parameters) - {"moving", "moving_affine", "fixed", "fixed_affine"}
    if set(affine_options) - allowed:
        raise ValueError(f"unknown affine_options {sorted(set(affine_options) - allowed)}; allowed: {sorted(allowed)}.")
    if figure and importlib.util.find_spec("matplotlib") is None:
        raise ValueError("figure=True needs matplotlib (pip install 'svreg-monai[bundle]'); or pass figure=False.")
    init = look_up_option(str(init), ("network", "identity"))
    stage_fn: NetworkStage | OptimisationStage | None = None
    if mode == RegistrationMode.NETWORK:
        stage_fn = NetworkStage(network, codes, device, extrapolate)  # type: ignore[arg-type]
    elif mode == RegistrationMode.OPTIMISE:
        if init == "network" and network is None:
            raise ValueError("mode 'optimise' with init 'network' needs a network; use init='identity' without one.")
        start = network if init == "network" else None
        stage_fn = OptimisationStage(start, codes if start is not None else None, device, extrapolate, optimise_options)
    output_dir = Path(output_dir).expanduser()

    timings: dict[str, float] = {}
    tic = time.perf_counter()
    mov = load_checked_image(moving, "moving image")
    fix = load_checked_image(fixed, "fixed image")
    mov_lab = None if moving_label is None else load_checked_image(moving_label, "moving label", "label")
    fix_lab = None if fixed_label is None else load_checked_image(fixed_label, "fixed label", "label")
    mov_mask = None if moving_mask is None else load_checked_image(moving_mask, "moving mask", "mask")
    fix_mask = None if fixed_mask is None else load_checked_image(fixed_mask, "fixed mask", "mask")
    for x, role, ref, ref_role in (
        (mov_lab, "moving label", mov, "moving image"),
        (mov_mask, "moving mask", mov, "moving image"),
        (fix_lab, "fixed label", fix, "fixed image"),
        (fix_mask, "fixed mask", fix, "fixed image"),
    ):
        if x is not None:
            _check_on_grid(x, ref, role, ref_role)
    timings["load"] = time.perf_counter() - tic

    with _staging(output_dir, overwrite) as stage, _torch_threads(num_threads):
        tic = time.perf_counter()
        mov_n = _normalise(mov, mov_mask, (lo, hi))
        fix_n = _normalise(fix, fix_mask, (lo, hi))
        fix_w = _working_grid(fix_n, float(spacing), size_divisor)
        grid = _Grids(
            a_m=np.asarray(mov.affine, dtype=np.float64),
            a_f=np.asarray(fix.affine, dtype=np.float64),
            a_w=np.asarray(fix_w.affine, dtype=np.float64),
            shape_f=tuple(fix.shape[1:]),
            shape_w=tuple(fix_w.shape[1:]),
        )
        timings["preprocess"] = time.perf_counter() - tic

        tic = time.perf_counter()
        matrix = np.eye(4)
        affine_info: dict[str, Any] = {"enabled": affine}
        if affine:
            res = affine_register(mov_n, grid.a_m, fix_w, grid.a_w, **affine_options)
            matrix = res.matrix
            affine_info.update(losses=res.losses, initial_matrix=res.initial_matrix.tolist())
        affine_info["matrix_ras"] = matrix.tolist()
        affine_info["determinant"] = float(np.linalg.det(matrix[:3, :3]))
        timings["affine"] = time.perf_counter() - tic

        tic = time.perf_counter()
        mov_w = resample_through(mov_n, grid.a_m, grid.a_w, grid.shape_w, matrix=matrix)
        if stage_fn is not None:
            deform = stage_fn(mov_w[None], fix_w.as_tensor()[None])
        else:
            zero = torch.zeros(1, 3, *grid.shape_w)
            deform = DeformableResult(zero, zero.clone(), None, {})
        timings["deformable"] = time.perf_counter() - tic

        tic = time.perf_counter()
        files, metrics = _write_outputs(
            stage, output_dir, grid, deform, matrix, mov, fix, mov_lab, fix_lab, fix_mask, mov_w, fix_w, figure
        )
        timings["outputs"] = time.perf_counter() - tic
        timings["total"] = time.perf_counter() - started
        report = {
            "inputs": {
                "moving": str(mov.meta["filename_or_obj"]),
                "fixed": str(fix.meta["filename_or_obj"]),
                "moving_label": None if mov_lab is None else str(mov_lab.meta["filename_or_obj"]),
                "fixed_label": None if fix_lab is None else str(fix_lab.meta["filename_or_obj"]),
                "moving_mask": None if mov_mask is None else str(mov_mask.meta["filename_or_obj"]),
                "fixed_mask": None if fix_mask is None else str(fix_mask.meta["filename_or_obj"]),
            },
            "parameters": {
                "mode": str(mode),
                "affine": affine,
                "spacing": float(spacing),
                "size_divisor": size_divisor,
                "intensity_percentiles": [lo, hi],
                "affine_options": affine_options,
                "codes": None if codes is None else [float(c) for c in codes],
                "init": init if mode == RegistrationMode.OPTIMISE else None,
                "optimise_options": dict(optimise_options or {}),
                "extrapolate": bool(extrapolate),
                "num_threads": num_threads if num_threads is not None else torch.get_num_threads(),
                "device": str(device),
                "figure": figure,
                "overwrite": overwrite,
            },
            "working_grid": {"shape": list(grid.shape_w), "affine_ras": grid.a_w.tolist()},
            "affine": affine_info,
            "deformable": deform.info,
            "metrics": metrics,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "files": {k: p.name for k, p in files.items()},
            "conventions": (
                "transforms map fixed points to moving points (pull-back); ITK files (.mat, .h5, warp fields) in "
                "LPS mm; report matrices and NIfTI affines in RAS mm; displacement fields on the working grid."
            ),
            "versions": _versions(),
        }
        write_json(stage / OUTPUT_FILES["report"], report)
        files["report"] = output_dir / OUTPUT_FILES["report"]
    return PairRegistrationResult(output_dir=output_dir, files=files, affine=matrix, report=report)


@dataclass(frozen=True)
class _Grids:
    """The three grids of a run: moving (``a_m``), fixed (``a_f``, ``shape_f``) and working (``a_w``, ``shape_w``)."""

    a_m: np.ndarray
    a_f: np.ndarray
    a_w: np.ndarray
    shape_f: tuple[int, ...]
    shape_w: tuple[int, ...]


def _write_outputs(
    stage: Path,
    output_dir: Path,
    grid: _Grids,
    deform: DeformableResult,
    matrix: np.ndarray,
    mov: MetaTensor,
    fix: MetaTensor,
    mov_lab: MetaTensor | None,
    fix_lab: MetaTensor | None,
    fix_mask: MetaTensor | None,
    mov_w: torch.Tensor,
    fix_w: MetaTensor,
    figure: bool,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write every output into ``stage`` and compute the metrics; the fixed grid's points are built once."""
    files: dict[str, Path] = {}
    a_m, a_f, a_w = grid.a_m, grid.a_f, grid.a_w
    world = ddf_to_world(deform.ddf[0].float(), a_w)
    world_inv = ddf_to_world(deform.inverse_ddf[0].float(), a_w)

    def put(name: str, write: Any) -> None:
        write(stage / OUTPUT_FILES[name])
        files[name] = output_dir / OUTPUT_FILES[name]

    points = world_coordinates(a_f, grid.shape_f)  # (*S_f, 3) float32 world points of the fixed grid
    mapped = transform_points(points, matrix, world, a_w)
    warped = sample_at_world_points(mov.as_tensor(), a_m, mapped)
    save_nifti(warped, a_f, stage / OUTPUT_FILES["warped"], dtype=np.float32)
    files["warped"] = output_dir / OUTPUT_FILES["warped"]
    del warped  # the largest arrays are freed as soon as they are written
    warped_label = None
    if mov_lab is not None:
        warped_label = sample_at_world_points(mov_lab.as_tensor(), a_m, mapped, mode="nearest").round()
        put("warped_label", lambda p: save_nifti(warped_label, a_f, p, dtype=_label_dtype(mov_lab)))
    del mapped

    affine_t = itk_affine_transform(matrix)
    inverse_affine_t = itk_affine_transform(np.linalg.inv(matrix))
    field = itk_displacement_transform(world, a_w)
    field_inv = itk_displacement_transform(world_inv, a_w)
    put("affine", lambda p: write_itk_transform(affine_t, p))
    put("warp", lambda p: write_itk_image(itk_image(_lps(world), a_w, vector=True), p))
    put("inverse_warp", lambda p: write_itk_image(itk_image(_lps(world_inv), a_w, vector=True), p))
    put("transform", lambda p: write_itk_transform(itk_composite_transform([field, affine_t]), p))
    put("inverse_transform", lambda p: write_itk_transform(itk_composite_transform([inverse_affine_t, field_inv]), p))

    jac = jacobian_determinant(deform.ddf.double())[0].float()
    put("jacobian", lambda p: save_nifti(sample_at_world_points(jac, a_w, points, padding_mode="border"), a_f, p))
    if deform.weight is not None:
        lam = sample_at_world_points(deform.weight[0].float(), a_w, points, padding_mode="border")
        put("weight", lambda p: save_nifti(lam, a_f, p, dtype=np.float32))
    if figure:
        from svreg_monai.visualize.figures import registration_figure  # matplotlib is imported only when needed

        warped_w = resample_through(mov_w, a_w, a_w, grid.shape_w, world_ddf=world, ddf_affine=a_w)
        ddf = deform.ddf[0]
        put(
            "figure",
            lambda p: registration_figure(
                _coronal(fix_w.as_tensor()),
                _coronal(mov_w),
                _coronal(warped_w),
                None if deform.weight is None else _coronal(deform.weight[0]),
                _coronal(torch.stack((-ddf[2], ddf[1], ddf[0]))),
                p,
                title=f"{Path(str(mov.meta['filename_or_obj'])).name} -> {Path(str(fix.meta['filename_or_obj'])).name}",
                axis=1,
            ),
        )

    # metrics: the Jacobian measures inside the fixed mask, or the fixed image's footprint (no padding)
    inside = (fix_mask.as_tensor() > 0).float() if fix_mask is not None else torch.ones(1, *grid.shape_f)
    working_points = world_coordinates(a_w, grid.shape_w)
    mask_w = sample_at_world_points(inside, a_f, working_points, mode="nearest")[None] > 0.5
    ddf = deform.ddf.double()
    nd = non_diffeomorphic_measures(ddf, mask=mask_w)
    metrics: dict[str, Any] = {
        "ndv_percent": float(nd.ndv),
        "ndp_percent": float(nd.ndp),
        "sd_log_jacobian": float(sd_log_jacobian(ddf, mask=mask_w)),
        "max_displacement_mm": float(world.norm(dim=0)[mask_w[0, 0]].max()) if mask_w.any() else 0.0,
        "metrics_within": "fixed mask" if fix_mask is not None else "fixed image footprint",
    }
    if deform.weight is not None:
        w = deform.weight[0, 0][mask_w[0, 0]].float()
        q = torch.quantile(w[:: max(1, w.numel() // 1_000_000)], torch.tensor([0.05, 0.5, 0.95]))
        metrics["lambda"] = {"p05": float(q[0]), "median": float(q[1]), "p95": float(q[2])}
    if warped_label is not None and fix_lab is not None:
        assert mov_lab is not None
        target = fix_lab.as_tensor()[0].round().long()
        labels = sorted(int(v) for v in torch.unique(target).tolist() if v != 0)
        mask = None if fix_mask is None else fix_mask.as_tensor()[0] > 0
        moved = {
            "header": sample_at_world_points(mov_lab.as_tensor(), a_m, points, mode="nearest"),
            "affine": sample_at_world_points(
                mov_lab.as_tensor(), a_m, transform_points(points, matrix), mode="nearest"
            ),
            "registered": warped_label,
        }
        metrics["dice"] = {k: _dice(v[0].round().long(), target, labels, mask) for k, v in moved.items()}
    return files, metrics


def _coronal(x: torch.Tensor) -> torch.Tensor:
    """``(C, X, Y, Z)`` on the RAS working grid -> ``(C, Z, Y, X)`` with superior first: coronal slices (axis 1)
    show superior at the top and the subject's right on the right. Displacements must have their channels
    reordered (and the Z channel negated) to match, as the caller does."""
    return x.permute(0, 3, 2, 1).flip(1)


def _lps(world: torch.Tensor) -> torch.Tensor:
    out = world.clone()
    out[:2] = -out[:2]
    return out


def _label_dtype(label: MetaTensor) -> type:
    return np.uint8 if float(label.max()) <= 255 else (np.uint16 if float(label.max()) <= 65535 else np.int32)
