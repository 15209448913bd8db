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
"""Spatially varying regularisation (SPR) heads on top of any MONAI feature backbone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.utils import get_act_layer
from monai.networks.nets import VoxelMorphUNet

from svreg_monai.flow.integration import VelocityFieldIntegrator
from svreg_monai.flow.resize import resize_ddf
from svreg_monai.networks.blocks.weight_head import RegularizationWeightHead
from svreg_monai.networks.nets.outputs import RegistrationOutput
from svreg_monai.priors import WeightPrior, get_prior
from svreg_monai.utils.precision import autocast, check_mixed_precision, guard_bfloat16_convolutions, to_float32
from svreg_monai.utils.validation import (
    check_option,
    check_positive_int,
    check_same_device,
    check_spatial_dims,
    check_tensor,
)

__all__ = ["SpatiallyVaryingRegistrationNet", "VELOCITY_INITS"]

VELOCITY_INITS = ("small", "zero")


class SpatiallyVaryingRegistrationNet(nn.Module):
    """Turn a MONAI feature backbone into a diffeomorphic registration network with a learned regularisation map.

    The moving and fixed images are concatenated along the channels, ``(B, 2C, *S)``, and passed to ``backbone``,
    which must return decoder features ``(B, feature_channels, *S)`` at the resolution of its input. Two heads
    read the features:

    - a velocity head (one convolution to ``N = spatial_dims`` channels), whose stationary velocity field is
      integrated by scaling and squaring (:class:`~svreg_monai.flow.VelocityFieldIntegrator`) into a
      diffeomorphic displacement;
    - a :class:`~svreg_monai.networks.blocks.RegularizationWeightHead` producing the voxel-wise regularisation
      weight ``lambda(x)`` (in ``[eps, 1]`` for the Beta prior).

    Suitable backbones (in channels ``2C``, out channels ``feature_channels``):
    ``monai.networks.nets.UNet(spatial_dims, 2, F, channels, strides)``,
    ``monai.networks.nets.LocalNet(spatial_dims, 2, ..., out_channels=F)``,
    ``monai.networks.nets.BasicUNet(spatial_dims, 2, F)``, ``monai.networks.nets.SwinUNETR(...)``, ... A
    ``monai.networks.nets.VoxelMorphUNet`` ends with a convolution to the ``N`` displacement channels; use
    :meth:`from_voxelmorph_unet`, which removes that convolution and uses the features before it.

    Args:
        backbone: feature network ``(B, 2C, *S) -> (B, feature_channels, *S)``.
        spatial_dims: 2 or 3.
        feature_channels: channels of the backbone output.
        weight_hidden_channels: channels of the weight head's conv blocks.
        prior: ``"beta"`` (weight in ``[eps, 1]``, reference), ``"gaussian"`` (in ``[eps, max_weight]``), any
            registered prior name or a :class:`~svreg_monai.priors.WeightPrior`.
        weight_norm: normalisation of the weight head's conv blocks (MONAI name; ``"batch"`` as in the reference).
        feature_act: optional activation applied to the backbone output before the heads (MONAI name, e.g.
            ``("leakyrelu", {"negative_slope": 0.2})``), for backbones whose last layer is a bare convolution.
        velocity_kernel_size: kernel size of the velocity head.
        velocity_init: ``"small"``: weights from ``N(0, velocity_init_std)`` and zero bias (VoxelMorph/TransMorph);
            ``"zero"``: all zero, so the network starts at the identity transform.
        velocity_init_std: standard deviation of the ``"small"`` initialisation.
        integration_steps: scaling-and-squaring steps; 0 uses the velocity as the displacement (not diffeomorphic).
        half_resolution: run the backbone and both heads on the 2x average-pooled pair (as TM-SPR does) and
            upsample the displacement (values doubled) and the weight logits by 2; needs even spatial sizes.
        eps: lower bound of the weight.
        max_weight: upper bound of the Gaussian-prior weight.
        mixed_precision: None (float32), ``"bfloat16"`` or ``"float16"``: the backbone and both heads run under
            :func:`torch.autocast` on the inputs' device, integration and the weight activation in float32; the
            outputs are float32 (see :mod:`svreg_monai.utils.precision`). With bfloat16, the convolutions of the
            backbone and heads are guarded against oneDNN's wrong CPU bfloat16 weight gradients on small maps
            (:func:`~svreg_monai.utils.precision.guard_bfloat16_convolutions`).

    Shapes:
        ``moving``, ``fixed``: ``(B, C, *S)``; output :class:`~svreg_monai.networks.nets.RegistrationOutput` with
        ``ddf`` ``(B, N, *S)`` (voxels of the input grid, channel order = array axes, pull-back: the warped moving
        image is ``moving(x + ddf(x))``), ``velocity`` ``(B, N, *S')`` (``S' = S // 2`` with ``half_resolution``,
        voxels of that grid) and ``weight`` ``(B, 1, *S)``.

    Example::

        backbone = UNet(spatial_dims=3, in_channels=2, out_channels=16, channels=(16, 32, 64), strides=(2, 2))
        net = SpatiallyVaryingRegistrationNet(backbone, spatial_dims=3, feature_channels=16)
        ddf, velocity, weight = net(moving, fixed)
    """

    def __init__(
        self,
        backbone: nn.Module,
        spatial_dims: int,
        feature_channels: int,
        weight_hidden_channels: int = 16,
        prior: str | WeightPrior = "beta",
        weight_norm: str | tuple | None = "batch",
        feature_act: str | tuple | None = None,
        velocity_kernel_size: int = 3,
        velocity_init: str = "small",
        velocity_init_std: float = 1e-5,
        integration_steps: int = 7,
        half_resolution: bool = False,
        eps: float = 1e-6,
        max_weight: float = 5.0,
        mixed_precision: str | torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.autocast_dtype = check_mixed_precision(mixed_precision)
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}.")
        self.spatial_dims = check_spatial_dims(spatial_dims)
        check_positive_int(feature_channels, "feature_channels")
        check_positive_int(weight_hidden_channels, "weight_hidden_channels")
        get_prior(prior)  # an unknown name fails here, listing the registered priors
        check_option(velocity_init, VELOCITY_INITS, "velocity_init")
        if velocity_init_std < 0:
            raise ValueError(f"velocity_init_std must be >= 0, got {velocity_init_std}.")
        if isinstance(velocity_kernel_size, bool) or velocity_kernel_size < 1 or velocity_kernel_size % 2 == 0:
            raise ValueError(f"velocity_kernel_size must be a positive odd integer, got {velocity_kernel_size!r}.")
        if isinstance(integration_steps, bool) or not isinstance(integration_steps, int) or integration_steps < 0:
            raise ValueError(f"integration_steps must be an integer >= 0, got {integration_steps!r}.")
        self.backbone = backbone
        self.feature_channels = feature_channels
        self.half_resolution = bool(half_resolution)
        self.feature_act = nn.Identity() if feature_act is None else get_act_layer(feature_act)
        self.velocity_head = Convolution(
            self.spatial_dims,
            feature_channels,
            self.spatial_dims,
            kernel_size=velocity_kernel_size,
            conv_only=True,
            bias=True,
        )
        conv = self.velocity_head.conv
        with torch.no_grad():
            if velocity_init == "zero":
                conv.weight.zero_()
            else:
                conv.weight.normal_(0.0, velocity_init_std)
            conv.bias.zero_()
        self.weight_head = RegularizationWeightHead(
            self.spatial_dims,
            feature_channels,
            weight_hidden_channels,
            prior=prior,
            norm=weight_norm,
            upsample_factor=2 if self.half_resolution else 1,
            eps=eps,
            max_weight=max_weight,
        )
        self.integrator = VelocityFieldIntegrator("svf", num_steps=integration_steps) if integration_steps else None
        if self.autocast_dtype == torch.bfloat16:  # oneDNN's bfloat16 weight gradients are wrong on small maps
            guard_bfloat16_convolutions(self)

    @classmethod
    def from_voxelmorph_unet(cls, unet: VoxelMorphUNet, **kwargs: Any) -> SpatiallyVaryingRegistrationNet:
        """Build the network on a MONAI ``VoxelMorphUNet`` whose displacement output convolution is removed.

        The UNet is modified in place (its ``final_conv_out`` becomes ``nn.Identity``); the features are the
        output of its last ``final_conv_channels`` block (``unet_out_channels`` if there is none).

        Args:
            unet: the ``VoxelMorphUNet`` (``in_channels`` = twice the image channels).
            kwargs: further arguments of :class:`SpatiallyVaryingRegistrationNet` except ``backbone``,
                ``spatial_dims`` and ``feature_channels``.
        """
        if not isinstance(unet, VoxelMorphUNet):
            raise ValueError(f"unet must be a monai.networks.nets.VoxelMorphUNet, got {type(unet).__name__}.")
        final = unet.net[1]
        final.final_conv_out = nn.Identity()
        channels = list(unet.final_conv_channels)
        feature_channels = int(channels[-1]) if channels else int(unet.unet_out_channels)
        return cls(unet, spatial_dims=unet.dimensions, feature_channels=feature_channels, **kwargs)

    def _check_inputs(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        check_tensor(moving, "moving", ndim=self.spatial_dims + 2)
        check_tensor(fixed, "fixed", ndim=self.spatial_dims + 2)
        if moving.shape != fixed.shape:
            raise ValueError(
                f"moving and fixed must have the same shape (B, C, *S), got {tuple(moving.shape)} and "
                f"{tuple(fixed.shape)}."
            )
        check_same_device(moving=moving, fixed=fixed)
        if self.half_resolution and any(s % 2 for s in moving.shape[2:]):
            raise ValueError(f"half_resolution needs even spatial sizes, got {tuple(moving.shape[2:])}.")

    def features(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Backbone features of the (optionally half-resolution) pair, ``(B, feature_channels, *S')``."""
        self._check_inputs(moving, fixed)
        pair = torch.cat((moving, fixed), dim=1)
        if self.half_resolution:
            pair = (F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool3d)(pair, 2)
        features = self.backbone(pair)
        if not isinstance(features, torch.Tensor):
            raise ValueError(
                f"backbone must return a tensor of decoder features, got {type(features).__name__} (for backbones "
                "with several outputs, wrap them to return the full-resolution features)."
            )
        expected = (pair.shape[0], self.feature_channels, *pair.shape[2:])
        if tuple(features.shape) != expected:
            raise ValueError(
                f"backbone output must have shape (B, feature_channels, *S) = {expected} for an input of shape "
                f"{tuple(pair.shape)}, got {tuple(features.shape)}."
            )
        return self.feature_act(features)

    def inverse_ddf(self, velocity: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
        """Displacement of the inverse transform, ``exp(-v)`` of the output's stationary ``velocity``.

        Args:
            velocity: ``(B, N, *S')`` the ``velocity`` of a :class:`RegistrationOutput` of this network.
            spatial_size: the input size ``S`` (the field is resized to it with ``half_resolution``).

        Returns:
            ``(B, N, *S)`` displacement in voxels of the input grid.

        Raises:
            ValueError: when the network integrates nothing (``integration_steps=0``).
        """
        if self.integrator is None:
            raise ValueError("inverse_ddf needs scaling and squaring (integration_steps > 0); this network has 0.")
        ddf = self.integrator.inverse(to_float32(velocity))
        return resize_ddf(ddf, size=spatial_size) if tuple(ddf.shape[2:]) != tuple(spatial_size) else ddf

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        """
        Args:
            moving: ``(B, C, *S)`` moving image.
            fixed: ``(B, C, *S)`` fixed image.

        Returns:
            ``RegistrationOutput(ddf, velocity, weight)``, see the class docstring.
        """
        with autocast(moving.device.type, self.autocast_dtype):
            features = self.features(moving, fixed)
            velocity = to_float32(self.velocity_head(features))
            weight = self.weight_head(features)  # float32
        ddf = velocity if self.integrator is None else self.integrator(velocity)
        if self.half_resolution:
            ddf = resize_ddf(ddf, size=moving.shape[2:])
        return RegistrationOutput(ddf=ddf, velocity=velocity, weight=weight)
