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
from svreg_monai.priors import BetaPrior, HyperparameterSpace, WeightPrior, get_prior

__all__ = [
    "HyperTransMorphTVFSPR",
    "codes_to_hyperparameters",
    "hyperparameters_to_codes",
    "DEFAULT_ALPHA_RANGE",
    "DEFAULT_LAMBDA_RANGE",
]

DEFAULT_ALPHA_RANGE = BetaPrior.default_range
"""Beta-prior shape ``alpha`` for codes 0 and 1 (reference: ``alpha = 1 + 0.2 * b``)."""
DEFAULT_LAMBDA_RANGE = (0.0, 5.0)
"""Regularisation scale ``lambda_max`` for codes 0 and 1 (reference: ``lambda_max = 5 * r``)."""

# the reference keeps the patch-merging projections ordinary layers
_DEFAULT_EXCLUDE = ("encoder.layers.*.downsample.reduction",)


def codes_to_hyperparameters(
    codes: torch.Tensor,
    alpha_range: Sequence[float] = DEFAULT_ALPHA_RANGE,
    lambda_range: Sequence[float] = DEFAULT_LAMBDA_RANGE,
    extrapolate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map Beta-prior codes to ``(alpha, lambda_max)``, linearly: code 0 -> ``low``, code 1 -> ``high``.

    :meth:`svreg_monai.priors.HyperparameterSpace.to_values` for the Beta prior; with the default ranges this is
    the reference's ``alpha = 1 + 0.2 * b``, ``lambda_max = 5 * r``.

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
    values = HyperparameterSpace("beta", alpha_range, lambda_range).to_values(codes, extrapolate)
    return values["alpha"], values["lambda_max"]


def hyperparameters_to_codes(
    alpha: float | torch.Tensor,
    lambda_max: float | torch.Tensor,
    alpha_range: Sequence[float] = DEFAULT_ALPHA_RANGE,
    lambda_range: Sequence[float] = DEFAULT_LAMBDA_RANGE,
    extrapolate: bool = False,
) -> torch.Tensor:
    """Inverse of :func:`codes_to_hyperparameters` (:meth:`~svreg_monai.priors.HyperparameterSpace.to_codes`).

    Returns:
        ``(B, 2)`` codes (``B = 1`` for numbers), float32 for numbers, else the tensors' dtype and device.

    Raises:
        ValueError: if a value lies outside its range (unless ``extrapolate``); codes within ``1e-5`` of the range
        (rounding) are clamped to ``[0, 1]``.
    """
    return HyperparameterSpace("beta", alpha_range, lambda_range).to_codes(alpha, lambda_max, extrapolate)


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
        alpha_range: the prior parameter at codes 0 and 1 (``alpha`` for the Beta prior, reference ``(1.0, 1.2)``;
            None for the prior's ``default_range``). Ignored when ``space`` is given.
        lambda_range: ``lambda_max`` at codes 0 and 1 (reference ``(0.0, 5.0)``). Ignored when ``space`` is given.
        space: the :class:`~svreg_monai.priors.HyperparameterSpace` the codes map onto (its prior must be
            ``prior``); None builds it from ``prior``, ``alpha_range`` and ``lambda_range``. The network itself only
            sees codes; the space is what :meth:`codes_to_hyperparameters` and the engines use.
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
        prior: str | WeightPrior = "beta",
        hidden: int = 96,
        hyper_layers: int = 6,
        generator: str = "dense",
        rank: int = 8,
        base_weights: bool = False,
        alpha_range: Sequence[float] | None = None,
        lambda_range: Sequence[float] = DEFAULT_LAMBDA_RANGE,
        space: HyperparameterSpace | None = None,
        include: LayerSelector = None,
        exclude: LayerSelector = _DEFAULT_EXCLUDE,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("use_checkpoint", False):
            raise ValueError(
                "use_checkpoint=True is not supported by HyperTransMorphTVFSPR: checkpointed hyper layers would be "
                "recomputed outside the call that provides their embedding."
            )
        if space is None:
            space = HyperparameterSpace(prior, alpha_range, lambda_range)
        elif not isinstance(space, HyperparameterSpace):
            raise ValueError(f"space must be a HyperparameterSpace or None, got {space!r}.")
        elif get_prior(prior).name != space.prior.name:
            raise ValueError(f"prior {prior!r} differs from the space's prior {space.prior.name!r}.")
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
        self.space = space

    def codes_to_hyperparameters(
        self, codes: torch.Tensor, extrapolate: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 2)`` codes -> ``(prior parameter, lambda_max)`` of shape ``(B,)`` in this model's :attr:`space`."""
        values = self.space.to_values(codes, extrapolate)
        return values[self.space.prior.parameter], values["lambda_max"]

    def hyperparameters_to_codes(
        self, alpha: float | torch.Tensor, lambda_max: float | torch.Tensor, extrapolate: bool = False
    ) -> torch.Tensor:
        """``(prior parameter, lambda_max)`` -> ``(B, 2)`` codes in this model's :attr:`space`."""
        return self.space.to_codes(alpha, lambda_max, extrapolate)

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
        codes = self.space.check_codes(hyper, extrapolate, name="hyper").to(dtype=moving.dtype)
        if codes.shape[0] not in (1, moving.shape[0]):
            raise ValueError(
                f"hyper must have one row per sample ({moving.shape[0]}) or one row, got shape {tuple(hyper.shape)}."
            )
        with self.conditioned(codes):
            return self.network(moving, fixed)
