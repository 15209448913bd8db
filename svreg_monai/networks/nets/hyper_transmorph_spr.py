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
"""Hyper-TM-SPR: TM-SPR conditioned on the regularisation hyperparameters (alpha, lambda_max).

One network is trained for a continuum of hyperparameters: every step draws codes ``(b, r)`` uniformly in
``[0, 1]^2``, maps them to the Beta-prior shape ``alpha = 1 + 0.2 b`` and the regularisation scale
``lambda_max = 5 r`` used in the loss, and feeds the codes to the network, whose layers are generated from them
(Chen et al., arXiv:2412.17982). At inference the hyperparameters are chosen per image pair without retraining.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from svreg_monai.networks.layers.hyperize import HyperConditionedNetwork, LayerSelector
from svreg_monai.networks.nets.outputs import RegistrationOutput
from svreg_monai.networks.nets.transmorph_spr import TransMorphTVFSPR
from svreg_monai.utils.validation import check_tensor

__all__ = [
    "HyperTransMorphTVFSPR",
    "codes_to_hyperparameters",
    "hyperparameters_to_codes",
    "DEFAULT_ALPHA_RANGE",
    "DEFAULT_LAMBDA_RANGE",
]

DEFAULT_ALPHA_RANGE = (1.0, 1.2)
"""Beta-prior shape ``alpha`` for codes 0 and 1 (reference: ``alpha = 1 + 0.2 * b``)."""
DEFAULT_LAMBDA_RANGE = (0.0, 5.0)
"""Regularisation scale ``lambda_max`` for codes 0 and 1 (reference: ``lambda_max = 5 * r``)."""

# rounding tolerance of the inverse mapping (a float32 alpha of 1.2 maps to a code of 1 + 2e-7)
_CODE_TOLERANCE = 1e-5

# the reference keeps the patch-merging projections ordinary layers
_DEFAULT_EXCLUDE = ("encoder.layers.*.downsample.reduction",)


def _check_range(values: Sequence[float], name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in values)
    if not lo < hi:
        raise ValueError(f"{name} must be (low, high) with low < high, got {tuple(values)!r}.")
    return lo, hi


def _check_codes(codes: object, extrapolate: bool, name: str = "codes") -> torch.Tensor:
    codes = check_tensor(codes, name, ndim=(1, 2))
    if codes.ndim == 1:
        codes = codes.unsqueeze(0)
    if codes.shape[1] != 2:
        raise ValueError(
            f"{name} must have shape (B, 2) with columns (alpha code, lambda_max code), got {tuple(codes.shape)}."
        )
    if not (torch.jit.is_scripting() or torch.jit.is_tracing()):
        if not bool(torch.isfinite(codes).all()):
            raise ValueError(f"{name} must be finite, got {codes.tolist()}.")
        if not extrapolate and bool(((codes < 0) | (codes > 1)).any()):
            raise ValueError(
                f"{name} must lie in the trained range [0, 1], got {codes.tolist()}; pass extrapolate=True to use "
                "codes outside it."
            )
    return codes


def codes_to_hyperparameters(
    codes: torch.Tensor,
    alpha_range: Sequence[float] = DEFAULT_ALPHA_RANGE,
    lambda_range: Sequence[float] = DEFAULT_LAMBDA_RANGE,
    extrapolate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map hyperparameter codes to the loss hyperparameters, linearly: code 0 -> ``low``, code 1 -> ``high``.

    With the default ranges this is the reference's ``alpha = 1 + 0.2 * b``, ``lambda_max = 5 * r``.

    Args:
        codes: ``(B, 2)`` (or ``(2,)``) codes ``(b, r)`` in ``[0, 1]``.
        alpha_range: ``alpha`` at codes 0 and 1.
        lambda_range: ``lambda_max`` at codes 0 and 1.
        extrapolate: accept codes outside ``[0, 1]`` (outside the range the network was trained on).

    Returns:
        ``(alpha, lambda_max)``, each of shape ``(B,)``.

    Raises:
        ValueError: for codes outside ``[0, 1]`` (unless ``extrapolate``), non-finite codes or a bad shape.
    """
    codes = _check_codes(codes, extrapolate)
    a0, a1 = _check_range(alpha_range, "alpha_range")
    l0, l1 = _check_range(lambda_range, "lambda_range")
    return a0 + (a1 - a0) * codes[:, 0], l0 + (l1 - l0) * codes[:, 1]


def hyperparameters_to_codes(
    alpha: float | torch.Tensor,
    lambda_max: float | torch.Tensor,
    alpha_range: Sequence[float] = DEFAULT_ALPHA_RANGE,
    lambda_range: Sequence[float] = DEFAULT_LAMBDA_RANGE,
    extrapolate: bool = False,
) -> torch.Tensor:
    """Inverse of :func:`codes_to_hyperparameters`.

    Args:
        alpha: Beta-prior shape, a number or a ``(B,)`` tensor.
        lambda_max: regularisation scale, a number or a ``(B,)`` tensor (broadcast against ``alpha``).
        alpha_range: ``alpha`` at codes 0 and 1.
        lambda_range: ``lambda_max`` at codes 0 and 1.
        extrapolate: accept values whose codes fall outside ``[0, 1]``.

    Returns:
        ``(B, 2)`` codes (``B = 1`` for numbers), float32 for numbers, else the tensors' dtype and device.

    Raises:
        ValueError: if a value lies outside its range (unless ``extrapolate``); codes within ``1e-5`` of the range
        (rounding) are clamped to ``[0, 1]``.
    """
    a0, a1 = _check_range(alpha_range, "alpha_range")
    l0, l1 = _check_range(lambda_range, "lambda_range")
    ref = alpha if isinstance(alpha, torch.Tensor) else lambda_max if isinstance(lambda_max, torch.Tensor) else None
    kwargs: dict[str, Any] = {"dtype": torch.float32} if ref is None else {"dtype": ref.dtype, "device": ref.device}
    values = []
    for value, name in ((alpha, "alpha"), (lambda_max, "lambda_max")):
        if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
            raise ValueError(f"{name} must be a number or a (B,) tensor, got {value!r}.")
        t = torch.as_tensor(value, **kwargs)
        if t.ndim > 1:
            raise ValueError(f"{name} must be a number or a (B,) tensor, got shape {tuple(t.shape)}.")
        values.append(t.reshape(-1))
    alpha_t, lambda_t = torch.broadcast_tensors(*values)
    codes = torch.stack(((alpha_t - a0) / (a1 - a0), (lambda_t - l0) / (l1 - l0)), dim=1)
    if extrapolate:
        return codes
    if not (torch.jit.is_scripting() or torch.jit.is_tracing()):
        for col, (name, lo, hi) in enumerate((("alpha", a0, a1), ("lambda_max", l0, l1))):
            if bool(((codes[:, col] < -_CODE_TOLERANCE) | (codes[:, col] > 1 + _CODE_TOLERANCE)).any()):
                raise ValueError(
                    f"{name} must lie in the trained range [{lo}, {hi}], got {values[col].tolist()}; pass "
                    "extrapolate=True to use values outside it."
                )
    # values at the ends of the ranges may round to codes just outside [0, 1]
    return codes.clamp(0.0, 1.0)


class HyperTransMorphTVFSPR(HyperConditionedNetwork):
    """Hyper-TM-SPR: :class:`~svreg_monai.networks.nets.TransMorphTVFSPR` whose layers are generated from the
    hyperparameter codes ``(b, r)`` of ``alpha = 1 + 0.2 b`` and ``lambda_max = 5 r``.

    Built with :class:`~svreg_monai.networks.layers.HyperConditionedNetwork`: as in the reference, every
    convolution (patch embedding, decoder, image skips, velocity heads, lambda head) and the attention and MLP
    projections of the Swin blocks are hyper layers, generated from a 6-layer, 96-unit ReLU
    :class:`~svreg_monai.networks.layers.HyperNetwork`; the patch-merging projections, layer norms and
    relative-position biases stay ordinary parameters. Codes may differ per sample of a batch (the reference
    supports one code per batch).

    Parameter counts (IXI configuration, ``img_size=(160, 192, 224)``, default backbone arguments; the plain
    ``TransMorphTVFSPR`` has 17,658,766):

    - ``generator="dense", base_weights=False`` (default, the reference's form): 1,610,688,984 parameters (the
      reference's model has 1,611,830,520; it also allocates generators for the biases of its bias-free layers and
      an unused flow head); 1,627,457,230 with ``base_weights=True``;
    - ``generator="low_rank", base_weights=True``: 84,831,974 (``rank=4``), 151,958,334 (``rank=8``, 10.6x fewer
      than dense) or 286,211,054 (``rank=16``); the model starts equal to ``TransMorphTVFSPR`` for every code.

    The dense form generates every weight from the 96-dimensional embedding through its own full matrix; the
    low-rank form restricts each layer's weights to a ``rank``-dimensional affine family of full kernels around the
    base, which is ample for a 2-D hyperparameter space and trains with far less memory (parameters, gradients and
    Adam state in float32: about 26 GB dense, 2.4 GB at rank 8).

    Args:
        img_size: full-resolution input size (see :class:`~svreg_monai.networks.nets.TransMorphTVFSPR`).
        spatial_dims: 2 or 3.
        embed_dim: patch-embedding channels.
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        time_steps: time-varying velocity steps.
        prior: ``"beta"`` or ``"gaussian"`` weight head.
        hidden: hypernetwork width.
        hyper_layers: hypernetwork depth.
        generator: ``"dense"`` or ``"low_rank"``, see :mod:`svreg_monai.networks.layers.hyper_layers`.
        rank: basis size of the ``"low_rank"`` generator.
        base_weights: keep ``TransMorphTVFSPR``'s initial weights as the base of every hyper layer (the model starts
            equal to it for every code); False generates the weights from scratch as the reference does.
        alpha_range: ``alpha`` at codes 0 and 1 (reference ``(1.0, 1.2)``).
        lambda_range: ``lambda_max`` at codes 0 and 1 (reference ``(0.0, 5.0)``).
        include: layers to hyperize (see :class:`~svreg_monai.networks.layers.HyperConditionedNetwork`); None = all.
        exclude: layers to keep ordinary; default: the patch-merging projections, as in the reference.
        kwargs: further arguments of :class:`~svreg_monai.networks.nets.TransMorphTVFSPR` (``in_channels``,
            ``window_size``, ``mlp_ratio``, ``qkv_bias``, ``integration_steps``, ``norm``, ...). Gradient
            checkpointing (``use_checkpoint``) is not supported: hyper layers cannot be recomputed outside the call.

    Example::

        net = HyperTransMorphTVFSPR(img_size=(160, 192, 224), generator="low_rank", rank=8)
        codes = torch.rand(batch, 2)  # (b, r) per sample
        alpha, lambda_max = net.codes_to_hyperparameters(codes)  # for the loss
        ddf, velocity, weight = net(moving, fixed, codes)
    """

    def __init__(
        self,
        img_size: Sequence[int] = (160, 192, 224),
        spatial_dims: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (4, 4, 5),
        num_heads: Sequence[int] = (8, 8, 8),
        time_steps: int = 7,
        prior: str = "beta",
        hidden: int = 96,
        hyper_layers: int = 6,
        generator: str = "dense",
        rank: int = 8,
        base_weights: bool = False,
        alpha_range: Sequence[float] = DEFAULT_ALPHA_RANGE,
        lambda_range: Sequence[float] = DEFAULT_LAMBDA_RANGE,
        include: LayerSelector = None,
        exclude: LayerSelector = _DEFAULT_EXCLUDE,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("use_checkpoint", False):
            raise ValueError(
                "use_checkpoint=True is not supported by HyperTransMorphTVFSPR: checkpointed hyper layers would be "
                "recomputed outside the call that provides their embedding."
            )
        alpha_lohi = _check_range(alpha_range, "alpha_range")
        lambda_lohi = _check_range(lambda_range, "lambda_range")
        backbone = TransMorphTVFSPR(
            img_size=img_size,
            spatial_dims=spatial_dims,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            time_steps=time_steps,
            prior=prior,
            **kwargs,
        )
        super().__init__(
            backbone,
            num_hyper_params=2,
            hidden=hidden,
            layers=hyper_layers,
            generator=generator,
            rank=rank,
            base_weights=base_weights,
            include=include,
            exclude=exclude,
        )
        self.alpha_range = alpha_lohi
        self.lambda_range = lambda_lohi

    def codes_to_hyperparameters(
        self, codes: torch.Tensor, extrapolate: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 2)`` codes -> ``(alpha, lambda_max)`` of shape ``(B,)`` with this model's ranges."""
        return codes_to_hyperparameters(codes, self.alpha_range, self.lambda_range, extrapolate)

    def hyperparameters_to_codes(
        self, alpha: float | torch.Tensor, lambda_max: float | torch.Tensor, extrapolate: bool = False
    ) -> torch.Tensor:
        """``(alpha, lambda_max)`` -> ``(B, 2)`` codes with this model's ranges."""
        return hyperparameters_to_codes(alpha, lambda_max, self.alpha_range, self.lambda_range, extrapolate)

    def inverse_ddf(self, velocity: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
        """Inverse displacement from an output's ``velocity`` (``TransMorphTVFSPR.inverse_ddf``; needs no codes)."""
        return self.network.inverse_ddf(velocity, spatial_size)

    def forward(  # type: ignore[override]
        self, moving: torch.Tensor, fixed: torch.Tensor, hyper: torch.Tensor, extrapolate: bool = False
    ) -> RegistrationOutput:
        """
        Args:
            moving: ``(B, C, *S)`` moving image at full resolution.
            fixed: ``(B, C, *S)`` fixed image at full resolution.
            hyper: ``(B, 2)`` codes ``(b, r)`` in ``[0, 1]``, one row per sample (or ``(1, 2)``/``(2,)`` for all).
            extrapolate: accept codes outside ``[0, 1]``.

        Returns:
            ``RegistrationOutput(ddf, velocity, weight)`` as :class:`~svreg_monai.networks.nets.TransMorphTVFSPR`.
        """
        codes = _check_codes(hyper, extrapolate, name="hyper").to(dtype=moving.dtype)
        if codes.shape[0] not in (1, moving.shape[0]):
            raise ValueError(
                f"hyper must have one row per sample ({moving.shape[0]}) or one row, got shape {tuple(hyper.shape)}."
            )
        with self.conditioned(codes):
            return self.network(moving, fixed)
