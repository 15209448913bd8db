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
"""TM-SPR: TransMorph with time-varying velocity steps and a spatially varying regularisation-weight head.

Chen, J., Wei, S., Liu, Y., Bian, Z., He, Y., Carass, A., Du, Y. et al., "Unsupervised learning of spatially varying
regularization for diffeomorphic image registration", arXiv:2412.17982 (2024).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from monai.networks.blocks import Convolution

from svreg_monai.flow.integration import TVF_RULES, VelocityFieldIntegrator
from svreg_monai.flow.resize import resize_ddf
from svreg_monai.networks.blocks.swin_encoder import SwinEncoder
from svreg_monai.networks.blocks.weight_head import RegularizationWeightHead
from svreg_monai.networks.nets.outputs import RegistrationOutput
from svreg_monai.priors import WeightPrior, get_prior
from svreg_monai.utils.precision import autocast, check_mixed_precision, guard_bfloat16_convolutions, to_float32
from svreg_monai.utils.validation import check_flag, check_option, check_spatial_dims, check_tensor

__all__ = ["TransMorphDecoderBlock", "TransMorphTVFSPR"]

_LEAKY_RELU = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
_NORMS = ("batch", "instance")


def _conv_block(spatial_dims: int, in_channels: int, out_channels: int, norm: str) -> Convolution:
    """3x3(x3) convolution without bias, normalisation, LeakyReLU(0.01) (TransMorph's ``Conv3dReLU``)."""
    return Convolution(spatial_dims, in_channels, out_channels, kernel_size=3, act=_LEAKY_RELU, norm=norm, bias=False)


@contextmanager
def _frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Run batch-norm layers in training mode without updating their running statistics (for recomputation)."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            tracked = m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None
            saved.append((m, m.momentum, tracked))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


class TransMorphDecoderBlock(nn.Module):
    """x2 (bi/tri)linear upsampling, concatenation of a skip feature map, and two conv-norm-LeakyReLU blocks.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input to upsample.
        out_channels: output channels.
        skip_channels: channels of the skip input (0 = none).
        norm: normalisation of the conv blocks (``"instance"`` in TransMorph's decoder).

    Shapes:
        ``(B, in_channels, *S)`` and skip ``(B, skip_channels, *(2S))`` -> ``(B, out_channels, *(2S))``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, skip_channels: int = 0, norm: str = "instance"
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"
        self.conv1 = _conv_block(spatial_dims, in_channels + skip_channels, out_channels, norm)
        self.conv2 = _conv_block(spatial_dims, out_channels, out_channels, norm)

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        """The block's x2 upsampling (no parameters), exposed so that callers can share it between blocks."""
        return F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, upsampled: bool = False) -> torch.Tensor:
        """
        Args:
            x: ``(B, in_channels, *S)``, or already upsampled ``(B, in_channels, *(2S))`` if ``upsampled``.
            skip: ``(B, skip_channels, *(2S))`` or None.
            upsampled: skip the upsampling because ``x`` was upsampled by the caller.
        """
        if not upsampled:
            x = self.upsample(x)
        if skip is not None:
            x = torch.cat((x, skip), dim=1)
        return self.conv2(self.conv1(x))


class TransMorphTVFSPR(nn.Module):
    """TM-SPR registration network (TransMorph-TVF backbone with a spatially varying regularisation-weight head).

    The network works at half resolution, as the reference training and inference scripts do: both images are
    average-pooled by 2, a Swin-transformer encoder and a convolutional decoder produce features at that
    resolution, and ``time_steps`` velocity heads predict one velocity step each from the decoder features and
    the moving image warped by the displacement accumulated so far. The accumulated field is exponentiated by
    scaling and squaring, clamped to ``+-max_displacement`` and upsampled x2 (values doubled) to the input
    resolution. The lambda head maps the sum of the step features to a voxel-wise weight, upsampled x2.

    With the defaults and ``img_size=(160, 192, 224)`` this is the reference's ``TransMorphTVFSPR`` with the
    ``"TransMorph-3-LVL"`` configuration, ``window_size = img_size // 32`` and ``SVF=True`` (17,658,766 trainable
    parameters: the reference's 17,660,065 less its unused ``reg_head``); its checkpoints load after
    :func:`~svreg_monai.networks.convert.convert_reference_checkpoint`.

    Args:
        img_size: full-resolution input size (used to derive the default window size; inputs of other sizes that
            satisfy the divisibility rule are accepted). Every axis must be divisible by ``2 * 4 * 2**(L - 1)``
            (32 for the default three stages).
        spatial_dims: 2 or 3; must equal ``len(img_size)``.
        in_channels: channels of each of the moving and fixed images.
        embed_dim: channels of the patch embedding (stage ``i`` has ``embed_dim * 2**i``); must be even.
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window per axis of the encoder's feature maps; default ``img_size // 32``
            per axis (the reference scripts' choice for the half-resolution network).
        mlp_ratio: MLP hidden channels relative to the stage channels.
        qkv_bias: bias in the query/key/value projections (reference: False).
        drop_rate: dropout in the encoder.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth of the encoder (reference: 0.3).
        reg_head_channels: channels of the features the velocity and lambda heads read (reference: 16).
        time_steps: number of time-varying velocity steps (reference: 7).
        tvf_rule: ``"reference"`` (``u_t = u_{t-1} + warp(v_t, v_t)``) or ``"composition"``
            (``u_t = v_t + warp(u_{t-1}, v_t)``), see :func:`~svreg_monai.flow.integration.tvf_step`.
        integration_steps: scaling-and-squaring steps applied to the accumulated field (reference: 7; 0 = none).
        max_displacement: clamp of the integrated half-resolution field, in half-resolution voxels (reference:
            100; None = no clamp).
        prior: ``"beta"`` (sigmoid head, weight in ``[1e-6, 1]``), ``"gaussian"`` (softplus head, weight in
            ``[1e-6, max_weight]``), any registered prior name or a :class:`~svreg_monai.priors.WeightPrior`.
        max_weight: upper bound of the Gaussian-prior head.
        norm: normalisation of the convolution blocks where the reference uses ``BatchNorm`` (the image skip
            convolutions and the lambda head): ``"batch"`` (reference) or ``"instance"``. The decoder blocks use
            instance normalisation in both cases, as in the reference.
        zero_init_velocity: initialise the velocity heads to zero (identity transform at initialisation); the
            reference draws their weights from ``Normal(0, 1e-5)`` with zero bias.
        use_checkpoint: gradient checkpointing of the Swin blocks and of every velocity step (image skip
            convolution, decoder block and head): their activations are recomputed in the backward pass instead of
            stored (at the IXI size about 40 % less peak memory in a training iteration at about the same time on
            CPU). Batch-norm running statistics are updated once per forward pass, as without checkpointing.
        use_sdpa: fused attention (:func:`torch.nn.functional.scaled_dot_product_attention`); False computes the
            attention matrix explicitly, as the reference.
        mixed_precision: None (float32 throughout, as the reference), ``"bfloat16"`` or ``"float16"``: the encoder,
            decoder, velocity and lambda heads run under :func:`torch.autocast` with this dtype on the inputs'
            device, while velocity integration, warps and the lambda activation stay in float32 (see
            :mod:`svreg_monai.utils.precision`); the outputs are float32. With bfloat16 the convolutions are guarded
            (:func:`~svreg_monai.utils.precision.guard_bfloat16_convolutions`): those on maps where oneDNN's CPU
            bfloat16 weight gradients are wrong (an output axis smaller than the kernel, e.g. the first decoder
            block of an input with an axis of 32) run in float32. Works on CPU, where MONAI's ``amp=True``
            does not apply; bfloat16 pays off on CPUs with AMX or AVX512-BF16 units and on recent GPUs (float16
            on GPU needs a gradient scaler, e.g. MONAI's ``SupervisedTrainer(amp=True)``).
        channels_last: run the convolution blocks at the network's full resolution (last decoder block, image
            skips, step decoders, heads) in channels-last memory layout; the outputs are returned contiguous and equal
            those of the default layout up to float rounding. Use it with ``mixed_precision="bfloat16"`` on CPU, where
            oneDNN's bfloat16 convolutions need this layout to be fast (a 96 -> 16 channel 3x3x3 convolution at
            80x96x112: 39 ms instead of 127 ms); in float32 it made a CPU training iteration slower (IXI size, 2 cores:
            36.2 s instead of 30.8 s), see ``benchmarks/bench_networks.py``.

    Example::

        net = TransMorphTVFSPR(img_size=(160, 192, 224))
        out = net(moving, fixed)  # (B, 1, 160, 192, 224) each
        out.ddf  # (B, 3, 160, 192, 224) displacement in voxels, moving -> fixed (pull-back)
        out.weight  # (B, 1, 160, 192, 224) lambda(x)
        out.velocity  # (B, 3, 80, 96, 112) accumulated velocity at half resolution
    """

    def __init__(
        self,
        img_size: Sequence[int] = (160, 192, 224),
        spatial_dims: int = 3,
        in_channels: int = 1,
        embed_dim: int = 96,
        depths: Sequence[int] = (4, 4, 5),
        num_heads: Sequence[int] = (8, 8, 8),
        window_size: Sequence[int] | int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        reg_head_channels: int = 16,
        time_steps: int = 7,
        tvf_rule: str = "reference",
        integration_steps: int = 7,
        max_displacement: float | None = 100.0,
        prior: str | WeightPrior = "beta",
        max_weight: float = 5.0,
        norm: str = "batch",
        zero_init_velocity: bool = False,
        use_checkpoint: bool = False,
        use_sdpa: bool = True,
        mixed_precision: str | torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.autocast_dtype = check_mixed_precision(mixed_precision)
        self.channels_last = check_flag(channels_last, "channels_last")
        img_size = tuple(int(s) for s in img_size)
        num_stages = len(depths)
        self.size_divisor = 2 * 4 * 2 ** (num_stages - 1)
        if len(img_size) != spatial_dims:
            raise ValueError(
                f"img_size must have {spatial_dims} entries for spatial_dims={spatial_dims}, got {img_size}."
            )
        if any(s < self.size_divisor or s % self.size_divisor for s in img_size):
            raise ValueError(
                f"every axis of img_size must be a positive multiple of {self.size_divisor} (2 for the half-resolution "
                f"input x patch size 4 x 2**{num_stages - 1} patch mergings), got {img_size}."
            )
        if isinstance(time_steps, bool) or not isinstance(time_steps, int) or time_steps < 1:
            raise ValueError(f"time_steps must be an integer >= 1, got {time_steps!r}.")
        check_option(tvf_rule, TVF_RULES, "tvf_rule")
        get_prior(prior)  # an unknown name fails here, listing the registered priors
        check_option(norm, _NORMS, "norm")
        if embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"embed_dim must be a positive even number, got {embed_dim}.")
        if max_displacement is not None and max_displacement <= 0:
            raise ValueError(f"max_displacement must be positive or None, got {max_displacement}.")
        if window_size is None:
            window_size = tuple(s // 32 for s in img_size)
        elif isinstance(window_size, int):
            window_size = (window_size,) * spatial_dims
        self.img_size = img_size
        self.in_channels = in_channels
        self.time_steps = time_steps
        self.max_displacement = max_displacement
        self.use_checkpoint = use_checkpoint
        half = embed_dim // 2

        self.encoder = SwinEncoder(
            spatial_dims,
            2 * in_channels,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            patch_size=4,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            use_checkpoint=use_checkpoint,
            use_sdpa=use_sdpa,
        )
        self.window_size = self.encoder.window_size
        feats = self.encoder.num_features
        # decoder[k] upsamples stage L-1-k (or the previous block) and concatenates stage L-2-k; the last block
        # concatenates the convolutional skip of the pooled input.
        self.decoder = nn.ModuleList(
            [
                TransMorphDecoderBlock(spatial_dims, feats[i], feats[i - 1], feats[i - 1], norm="instance")
                for i in range(num_stages - 1, 0, -1)
            ]
        )
        self.decoder.append(TransMorphDecoderBlock(spatial_dims, feats[0], half, half, norm="instance"))
        self.conv_skip = _conv_block(spatial_dims, 2 * in_channels, half, norm)
        self.step_skips = nn.ModuleList(
            [_conv_block(spatial_dims, 2 * in_channels, half, norm) for _ in range(time_steps)]
        )
        self.step_decoders = nn.ModuleList(
            [
                TransMorphDecoderBlock(spatial_dims, half, reg_head_channels, half, norm="instance")
                for _ in range(time_steps)
            ]
        )
        self.velocity_heads = nn.ModuleList(
            [
                Convolution(spatial_dims, reg_head_channels, spatial_dims, kernel_size=3, conv_only=True, bias=True)
                for _ in range(time_steps)
            ]
        )
        self.weight_head = RegularizationWeightHead(
            spatial_dims, reg_head_channels, half, prior=prior, norm=norm, upsample_factor=2, max_weight=max_weight
        )
        self.integrator = VelocityFieldIntegrator("tvf", num_steps=integration_steps, tvf_rule=tvf_rule)
        self.reset_velocity_heads(zero=zero_init_velocity)
        if self.autocast_dtype == torch.bfloat16:  # oneDNN's bfloat16 weight gradients are wrong on small maps
            guard_bfloat16_convolutions(self)

    def reset_velocity_heads(self, zero: bool = False) -> None:
        """Initialise the velocity heads: weights ``Normal(0, 1e-5)`` (reference) or zero, biases zero."""
        for head in self.velocity_heads:
            conv = head.conv
            with torch.no_grad():
                if zero:
                    conv.weight.zero_()
                else:
                    conv.weight.normal_(0.0, 1e-5)
                conv.bias.zero_()

    def inverse_ddf(self, velocity: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
        """Displacement of the inverse transform, from the negated velocity: ``exp(-v)``.

        ``forward``'s displacement is ``exp(v)`` of the accumulated half-resolution field ``v`` (the ``velocity``
        of its output), clamped and upsampled to the input; this does the same with ``-v``, so that
        ``warp(ddf, inverse_ddf) ~ -ddf`` (the maps compose to about the identity) up to interpolation error.

        Args:
            velocity: ``(B, N, *S')`` the ``velocity`` of a :class:`RegistrationOutput` of this network.
            spatial_size: the full-resolution input size ``S``.

        Returns:
            ``(B, N, *S)`` displacement in voxels of the input grid (pull-back, fixed <- moving).

        Raises:
            ValueError: when the network integrates no stationary field (``integration_steps=0``).
        """
        if self.integrator.num_steps == 0:
            raise ValueError("inverse_ddf needs scaling and squaring (integration_steps > 0); this network has 0.")
        flow = self.integrator.exponentiate(-to_float32(velocity))
        if self.max_displacement is not None:
            flow = torch.clamp(flow, -self.max_displacement, self.max_displacement)
        return resize_ddf(flow, size=spatial_size)

    def _check_inputs(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        n = self.spatial_dims
        check_tensor(moving, "moving", ndim=n + 2)
        check_tensor(fixed, "fixed", ndim=n + 2)
        if moving.shape != fixed.shape:
            raise ValueError(
                f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must have the same shape (B, C, *S)."
            )
        if moving.shape[1] != self.in_channels:
            raise ValueError(
                f"moving and fixed must have {self.in_channels} channel(s), got shape {tuple(moving.shape)}."
            )
        size = tuple(moving.shape[2:])
        if any(s < self.size_divisor or s % self.size_divisor for s in size):
            raise ValueError(
                f"every spatial axis of the inputs must be a positive multiple of {self.size_divisor} (2 for the "
                f"half-resolution input x patch size 4 x 2**{self.encoder.num_stages - 1} patch mergings), "
                f"got spatial size {size}."
            )
        if moving.device != fixed.device:
            raise ValueError(f"moving and fixed must be on the same device, got {moving.device} and {fixed.device}.")

    def _pool(self, x: torch.Tensor, kernel: int, stride: int, padding: int = 0) -> torch.Tensor:
        pool = F.avg_pool3d if self.spatial_dims == 3 else F.avg_pool2d
        return pool(x, kernel, stride, padding)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory layout of the convolution blocks (channels-last if ``channels_last``)."""
        if not self.channels_last:
            return x
        return x.contiguous(memory_format=torch.channels_last_3d if self.spatial_dims == 3 else torch.channels_last)

    def _step_skip(self, t: int, image_pair: torch.Tensor) -> torch.Tensor:
        block = self.step_skips[t]
        if not (self.use_checkpoint and torch.is_grad_enabled()):
            return block(image_pair)
        calls: list[int] = []

        def run(x: torch.Tensor) -> torch.Tensor:
            if calls:  # recomputation in the backward pass: the running statistics were updated already
                with _frozen_running_stats(block):
                    return block(x)
            calls.append(1)
            return block(x)

        return checkpoint.checkpoint(run, image_pair, use_reentrant=False)

    def _decode_step(self, t: int, up: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.step_decoders[t](up, skip, upsampled=True)
        return x, self.velocity_heads[t](x)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
        """
        Args:
            moving: ``(B, C, *S)`` moving image at full resolution.
            fixed: ``(B, C, *S)`` fixed image at full resolution.

        Returns:
            :class:`~svreg_monai.networks.nets.outputs.RegistrationOutput` with ``ddf`` ``(B, N, *S)`` in voxels of
            the input (pull-back: ``warp(moving, ddf)`` ~ ``fixed``), ``velocity`` ``(B, N, *(S / 2))`` the
            accumulated velocity at half resolution in half-resolution voxels, and ``weight`` ``(B, 1, *S)``.
        """
        if not torch.jit.is_tracing():
            self._check_inputs(moving, fixed)
        # the pooled images stay in the input precision: the warps sample them in float32
        moving_h = self._pool(moving, 2, 2)
        fixed_h = self._pool(fixed, 2, 2)
        pair = torch.cat((moving_h, fixed_h), dim=1)
        ddf: torch.Tensor | None = None
        with autocast(moving.device.type, self.autocast_dtype):
            feats = self.encoder(pair)
            x = feats[-1]
            for k, block in enumerate(self.decoder[:-1]):
                x = block(x, feats[-2 - k])
            x = self.decoder[-1](self._layout(x), self.conv_skip(self._layout(self._pool(pair, 3, 2, 1))))
            # every step decoder upsamples the same features with the same parameter-free upsampling: do it once
            up = self._layout(self.step_decoders[0].upsample(x))

            step_sum: torch.Tensor | None = None
            warped = moving_h
            for t in range(self.time_steps):
                skip = self._step_skip(t, self._layout(torch.cat((warped, fixed_h), dim=1)))
                if self.use_checkpoint and torch.is_grad_enabled():
                    feat, velocity = checkpoint.checkpoint(self._decode_step, t, up, skip, use_reentrant=False)
                else:
                    feat, velocity = self._decode_step(t, up, skip)
                step_sum = feat if step_sum is None else step_sum + feat
                ddf = self.integrator.step(ddf, velocity)  # float32, see VelocityFieldIntegrator
                if t < self.time_steps - 1:  # the warped image of the last step is not used
                    warped = self.integrator.warp(moving_h, ddf)
            assert ddf is not None and step_sum is not None
            weight = self.weight_head(step_sum)  # float32

        flow = self.integrator.exponentiate(ddf) if self.integrator.num_steps > 0 else ddf
        if self.max_displacement is not None:
            flow = torch.clamp(flow, -self.max_displacement, self.max_displacement)
        flow = resize_ddf(flow, scale_factor=2)
        if self.channels_last:
            flow, ddf, weight = flow.contiguous(), ddf.contiguous(), weight.contiguous()
        return RegistrationOutput(flow, ddf, weight)
