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
"""Layers whose weights and biases are generated from a hyperparameter embedding.

Each hyper layer owns one :class:`ParameterGenerator` per parameter tensor (weight, bias) that maps the embedding
``e`` of shape ``(B, E)`` produced by :class:`~svreg_monai.networks.layers.HyperNetwork` to one parameter tensor
per sample. Two generator forms are available:

- ``"dense"``: ``w(e) = G e`` with a dense ``G`` of shape ``(numel(w), E)`` (``nn.Linear(E, numel, bias=False)``),
  exactly the generator of the Hyper-TransMorph-SPR reference. It costs ``E`` times the parameters of the layer it
  generates (about 1.6 billion parameters for the reference's hyper TransMorph).
- ``"low_rank"``: ``w(e) = w_0 + sum_k c_k(e) W_k`` with ``c(e) = A e`` (``A`` of shape ``(rank, E)``) and ``rank``
  full basis tensors ``W_k`` of the layer's shape, i.e. the dense generator matrix factorised as
  ``G = [W_1 .. W_rank] A`` plus a base ``w_0``. Every basis tensor is a full-rank kernel, so the generated weights
  can move in any ``rank``-dimensional affine subspace of weight space (the dense form spans an ``E``-dimensional
  linear subspace); the cost is ``(rank + 1)`` times the layer's parameters plus ``rank * E``. Since the
  hyperparameter codes live on a 2-D manifold, a small rank (4-16) suffices in practice, at about 19x (rank 4) to
  6x (rank 16) fewer parameters than the dense form for ``E = 96``.

Either form may carry a base tensor ``w_0`` (``base_weights=True``): the base is initialised to the weights of an
ordinary layer and the code-dependent part to zero, so that the hyper layer starts equal to that layer for every
code. Without a base (the reference's form) the generator alone produces the weights.

Per-sample hyperparameters are supported: with an embedding of batch ``B > 1`` the convolution is evaluated as one
grouped convolution (the batch folded into the channels, ``groups = B * groups``) and the linear layer as a batched
matrix product. The input's leading dimension may be ``B`` or a multiple ``k * B`` whose outermost factor is the
sample index (e.g. the ``(B * num_windows, N, C)`` windows of a Swin transformer).

When a layer is called without an embedding it takes the one set for its ``context_key`` by
:func:`hyper_embedding_context` (used by :func:`~svreg_monai.networks.layers.hyperize`); the context is stored in a
:class:`contextvars.ContextVar`, so concurrent calls in different threads do not interfere.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep

from svreg_monai.utils.precision import GUARDED_CONVOLUTIONS, guarded_convolution
from svreg_monai.utils.validation import check_option, check_positive_int, check_tensor

__all__ = [
    "GENERATORS",
    "ParameterGenerator",
    "HyperConv",
    "HyperConvTranspose",
    "HyperLinear",
    "hyper_embedding_context",
    "current_hyper_embedding",
]

GENERATORS = ("dense", "low_rank")

_EMBEDDINGS: ContextVar[Mapping[int, torch.Tensor] | None] = ContextVar("svreg_monai_hyper_embeddings", default=None)


@contextmanager
def hyper_embedding_context(key: int, embedding: torch.Tensor) -> Iterator[torch.Tensor]:
    """Make ``embedding`` the embedding of every hyper layer with ``context_key == key`` inside the ``with`` block.

    Contexts nest (an inner block for the same key shadows the outer one until it exits) and are local to the
    current thread / asyncio task.

    Args:
        key: the context key shared by the hyper layers of one conditioned network.
        embedding: ``(B, E)`` embedding.
    """
    current = _EMBEDDINGS.get()
    token = _EMBEDDINGS.set({**(current or {}), key: embedding})
    try:
        yield embedding
    finally:
        _EMBEDDINGS.reset(token)


def current_hyper_embedding(key: int | None) -> torch.Tensor | None:
    """The embedding set by the innermost active :func:`hyper_embedding_context` for ``key``, or None."""
    if key is None:
        return None
    current = _EMBEDDINGS.get()
    return None if current is None else current.get(key)


class ParameterGenerator(nn.Module):
    """Generate one parameter tensor per sample from an embedding (see the module docstring for the forms).

    Args:
        embedding_dim: length ``E`` of the embedding.
        shape: shape of the generated tensor (e.g. ``(out, in, k, k, k)``).
        generator: ``"dense"`` or ``"low_rank"``.
        rank: number of basis tensors of the ``"low_rank"`` form (ignored for ``"dense"``).
        base: initial value of the base tensor ``w_0``; ``None`` for no base. With a base the code-dependent part is
            initialised to zero (dense matrix, resp. the basis tensors), so the output equals ``base`` for every
            embedding until training moves it.
        init_std: without a base, initialise the last factor (dense matrix, resp. basis tensors) from
            ``N(0, init_std)`` (the reference uses ``1e-5`` for its flow heads); ``None`` keeps PyTorch's default
            ``nn.Linear`` initialisation for the dense matrix and ``U(-1/sqrt(rank), 1/sqrt(rank))`` for the basis.

    Shapes:
        ``(B, E) -> (B, *shape)``.
    """

    def __init__(
        self,
        embedding_dim: int,
        shape: Sequence[int],
        generator: str = "dense",
        rank: int = 8,
        base: torch.Tensor | None = None,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(embedding_dim, "embedding_dim")
        check_option(generator, GENERATORS, "generator")
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) == 0 or any(s < 1 for s in self.shape):
            raise ValueError(f"shape must be a non-empty sequence of positive integers, got {shape!r}.")
        if base is not None and tuple(base.shape) != self.shape:
            raise ValueError(f"base must have shape {self.shape}, got {tuple(base.shape)}.")
        if init_std is not None and init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}.")
        self.generator = generator
        self.embedding_dim = embedding_dim
        numel = math.prod(self.shape)
        self.base = None if base is None else nn.Parameter(base.detach().clone())
        if generator == "dense":
            self.rank = None
            self.dense = nn.Linear(embedding_dim, numel, bias=False)
            last = self.dense.weight
        else:
            self.rank = check_positive_int(rank, "rank")
            self.coefficients = nn.Linear(embedding_dim, self.rank, bias=False)
            self.basis = nn.Parameter(torch.empty(self.rank, numel, device=self.coefficients.weight.device))
            nn.init.uniform_(self.basis, -1.0 / math.sqrt(self.rank), 1.0 / math.sqrt(self.rank))
            last = self.basis
        with torch.no_grad():
            if base is not None:
                last.zero_()
            elif init_std is not None:
                last.normal_(0.0, init_std)

    def set_base(self, value: torch.Tensor) -> None:
        """Set the base tensor to ``value`` and the code-dependent part to zero (output = ``value`` for every code)."""
        if tuple(value.shape) != self.shape:
            raise ValueError(f"value must have shape {self.shape}, got {tuple(value.shape)}.")
        with torch.no_grad():
            if self.base is None:
                self.base = nn.Parameter(value.detach().clone())
            else:
                self.base.copy_(value)
            (self.dense.weight if self.generator == "dense" else self.basis).zero_()

    @property
    def numel(self) -> int:
        """Number of elements of one generated tensor."""
        return math.prod(self.shape)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embedding: ``(B, E)``.

        Returns:
            ``(B, *shape)`` generated tensors, one per sample.
        """
        flat = self.dense(embedding) if self.generator == "dense" else self.coefficients(embedding) @ self.basis
        out = flat.reshape(embedding.shape[0], *self.shape)
        return out if self.base is None else out + self.base

    def extra_repr(self) -> str:
        rank = f", rank={self.rank}" if self.rank is not None else ""
        return (
            f"embedding_dim={self.embedding_dim}, shape={self.shape}, generator={self.generator!r}{rank}, "
            f"base={self.base is not None}"
        )


class _HyperLayer(nn.Module):
    """Shared embedding handling: explicit argument, else the context set for ``context_key``."""

    embedding_dim: int
    context_key: int | None

    def _embedding(self, embedding: torch.Tensor | None, batch: int) -> torch.Tensor:
        if embedding is None:
            embedding = current_hyper_embedding(self.context_key)
            if embedding is None:
                raise RuntimeError(
                    f"{type(self).__name__} was called without an embedding: pass layer(x, embedding) or call it "
                    "through a hyper-conditioned network (hyperize(...)(..., hyper=codes)). Gradient checkpointing "
                    "that recomputes hyper layers outside that call is not supported."
                )
        check_tensor(embedding, "embedding")
        if embedding.ndim != 2 or embedding.shape[1] != self.embedding_dim:
            raise ValueError(f"embedding must have shape (B, {self.embedding_dim}), got {tuple(embedding.shape)}.")
        if batch % embedding.shape[0] != 0:
            raise ValueError(
                f"the input's leading dimension ({batch}) must be a multiple of the embedding's batch size "
                f"({embedding.shape[0]}): one embedding row per sample, or one row for all samples."
            )
        return embedding


_LayerT = TypeVar("_LayerT", bound=_HyperLayer)


def _copy_base(layer: _LayerT, module: nn.Module, base_weights: bool) -> _LayerT:
    """Make ``layer`` reproduce ``module`` for every code (base = module's parameters, code part = 0)."""
    if base_weights:
        layer.weight_generator.set_base(module.weight)
        if layer.bias_generator is not None:
            layer.bias_generator.set_base(module.bias)
    return layer


def _fold(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(g * k, C, *S) -> (k, g * C, *S)`` with the sample index ``g`` outermost in the input's batch."""
    n, c = x.shape[0], x.shape[1]
    k = n // groups
    return x.reshape(groups, k, c, *x.shape[2:]).transpose(0, 1).reshape(k, groups * c, *x.shape[2:])


def _unfold(y: torch.Tensor, groups: int) -> torch.Tensor:
    """Inverse of :func:`_fold`: ``(k, g * C, *S) -> (g * k, C, *S)``."""
    k, gc = y.shape[0], y.shape[1]
    c = gc // groups
    return y.reshape(k, groups, c, *y.shape[2:]).transpose(0, 1).reshape(groups * k, c, *y.shape[2:])


class HyperConv(_HyperLayer):
    """N-D convolution (N = 1, 2, 3) whose weight and bias are generated from a hyperparameter embedding.

    Equivalent to ``nn.Conv{N}d`` with the same arguments whose ``weight``/``bias`` are replaced, per sample, by
    ``weight_generator(e)``/``bias_generator(e)``.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel size (int or one per axis).
        embedding_dim: length ``E`` of the embedding.
        stride: stride (int or one per axis).
        padding: padding (int, one per axis, ``"same"`` or ``"valid"``).
        dilation: dilation (int or one per axis).
        groups: channel groups.
        bias: whether a bias is generated.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        generator: ``"dense"`` or ``"low_rank"`` (see :class:`ParameterGenerator`).
        rank: rank of the ``"low_rank"`` generator.
        base_weights: give the generators a base tensor initialised like ``nn.Conv{N}d`` (PyTorch's default), so
            that the layer starts as an ordinary convolution for every code.
        init_std: see :class:`ParameterGenerator` (only without base weights).

    Shapes:
        ``x``: ``(n, in_channels, *S)`` with ``n = k * B`` (sample index outermost), ``embedding``: ``(B, E)`` or
        ``(1, E)``; output ``(n, out_channels, *S')``.

    Example::

        conv = HyperConv(3, 2, 16, 3, embedding_dim=96, padding=1, generator="low_rank", rank=8)
        y = conv(torch.rand(2, 2, 8, 8, 8), embedding)  # embedding: (2, 96), y: (2, 16, 8, 8, 8)
    """

    transposed = False

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int,
        embedding_dim: int = 96,
        stride: Sequence[int] | int = 1,
        padding: Sequence[int] | int | str = 0,
        dilation: Sequence[int] | int = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        generator: str = "dense",
        rank: int = 8,
        base_weights: bool = False,
        init_std: float | None = None,
        output_padding: Sequence[int] | int = 0,
    ) -> None:
        super().__init__()
        if isinstance(spatial_dims, bool) or spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        check_positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})."
            )
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(
                f"padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', got {padding_mode!r}."
            )
        if self.transposed and (padding_mode != "zeros" or isinstance(padding, str)):
            raise ValueError(
                f"transposed convolutions need padding_mode='zeros' and numeric padding, got {padding_mode!r}, "
                f"{padding!r}."
            )
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a sequence of ints, 'same' or 'valid', got {padding!r}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = ensure_tuple_rep(kernel_size, spatial_dims)
        self.stride = ensure_tuple_rep(stride, spatial_dims)
        self.padding = padding if isinstance(padding, str) else ensure_tuple_rep(padding, spatial_dims)
        self.dilation = ensure_tuple_rep(dilation, spatial_dims)
        self.output_padding = ensure_tuple_rep(output_padding, spatial_dims)
        self.groups = groups
        self.padding_mode = padding_mode
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        self.context_key: int | None = None
        if self.transposed:
            weight_shape = (in_channels, out_channels // groups, *self.kernel_size)
        else:
            weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        base_w, base_b = self._default_parameters(bias) if base_weights else (None, None)
        kwargs = {"embedding_dim": embedding_dim, "generator": generator, "rank": rank, "init_std": init_std}
        self.weight_generator = ParameterGenerator(shape=weight_shape, base=base_w, **kwargs)
        self.bias_generator = ParameterGenerator(shape=(out_channels,), base=base_b, **kwargs) if bias else None

    def _default_parameters(self, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weights of an ordinary layer with the same configuration (PyTorch's default initialisation)."""
        cls = (
            (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
            if self.transposed
            else (
                nn.Conv1d,
                nn.Conv2d,
                nn.Conv3d,
            )
        )
        layer = cls[self.spatial_dims - 1](
            self.in_channels, self.out_channels, self.kernel_size, groups=self.groups, bias=bias
        )
        return layer.weight.detach(), None if layer.bias is None else layer.bias.detach()

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        embedding_dim: int = 96,
        generator: str = "dense",
        rank: int = 8,
        base_weights: bool = True,
        init_std: float | None = None,
    ) -> HyperConv:
        """Build a hyper layer with the configuration of an ordinary ``nn.Conv{N}d`` (``nn.ConvTranspose{N}d`` for
        :class:`HyperConvTranspose`).

        Args:
            module: the layer to convert.
            embedding_dim: length ``E`` of the embedding.
            generator: ``"dense"`` or ``"low_rank"``.
            rank: rank of the ``"low_rank"`` generator.
            base_weights: initialise the base tensors to the layer's weight and bias (and the code-dependent part to
                zero), so that the hyper layer reproduces the layer for every code.
            init_std: see :class:`ParameterGenerator` (only without base weights).
        """
        plain = (
            (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
            if cls.transposed
            else (nn.Conv1d, nn.Conv2d, nn.Conv3d)
        )
        expected = plain + tuple(GUARDED_CONVOLUTIONS[t] for t in plain)
        if type(module) not in expected:
            raise ValueError(f"{cls.__name__}.from_module expects one of {expected}, got {type(module).__name__}.")
        bias = module.bias is not None
        extra = {"output_padding": module.output_padding} if cls.transposed else {}
        layer = cls(
            spatial_dims=len(module.kernel_size),
            in_channels=module.in_channels,
            out_channels=module.out_channels,
            kernel_size=module.kernel_size,
            embedding_dim=embedding_dim,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=bias,
            padding_mode=module.padding_mode,
            generator=generator,
            rank=rank,
            init_std=init_std,
            **extra,
        )
        return _copy_base(layer.to(device=module.weight.device, dtype=module.weight.dtype), module, base_weights)

    def _explicit_padding(self) -> list[int]:
        """``F.pad`` amounts (last axis first) for a non-zero ``padding_mode``."""
        pads: list[int] = []
        for i in reversed(range(self.spatial_dims)):
            if self.padding == "valid":
                left = right = 0
            elif self.padding == "same":
                total = self.dilation[i] * (self.kernel_size[i] - 1)
                left, right = total // 2, total - total // 2
            else:
                left = right = int(self.padding[i])  # type: ignore[index]
            pads += [left, right]
        return pads

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
        # guarded: computed in float32 where CPU bfloat16 weight gradients are wrong (the generator's gradient here)
        if self.transposed:
            fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.spatial_dims - 1]
            return guarded_convolution(
                fn,
                x,
                weight,
                bias,
                transposed=True,
                stride=self.stride,
                padding=self.padding,
                output_padding=self.output_padding,
                groups=groups,
                dilation=self.dilation,
            )
        fn = (F.conv1d, F.conv2d, F.conv3d)[self.spatial_dims - 1]
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._explicit_padding(), mode=self.padding_mode)
            padding = 0
        return guarded_convolution(
            fn, x, weight, bias, stride=self.stride, padding=padding, dilation=self.dilation, groups=groups
        )

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: ``(n, in_channels, *S)``, ``n`` a multiple of the embedding's batch size.
            embedding: ``(B, E)`` or ``(1, E)``; None to use the embedding of the active context.

        Returns:
            ``(n, out_channels, *S')``.
        """
        check_tensor(x, "x", ndim=self.spatial_dims + 2)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels, got shape {tuple(x.shape)}.")
        embedding = self._embedding(embedding, x.shape[0])
        b = embedding.shape[0]
        weight = self.weight_generator(embedding)
        bias = None if self.bias_generator is None else self.bias_generator(embedding)
        if b == 1:
            return self._conv(x, weight[0], None if bias is None else bias[0], self.groups)
        weight = weight.reshape(b * weight.shape[1], *weight.shape[2:])
        bias = None if bias is None else bias.reshape(-1)
        return _unfold(self._conv(_fold(x, b), weight, bias, b * self.groups), b)

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, groups={self.groups}, padding_mode={self.padding_mode!r}"
        )


class HyperConvTranspose(HyperConv):
    """N-D transposed convolution whose weight and bias are generated from a hyperparameter embedding.

    Same arguments as :class:`HyperConv` plus ``output_padding``; ``padding_mode`` must be ``"zeros"`` and
    ``padding`` numeric, as for ``nn.ConvTranspose{N}d``. The generated weight has PyTorch's transposed layout
    ``(in_channels, out_channels // groups, *kernel_size)``.
    """

    transposed = True


class HyperLinear(_HyperLayer):
    """Fully connected layer whose weight and bias are generated from a hyperparameter embedding.

    Args:
        in_features: input features.
        out_features: output features.
        embedding_dim: length ``E`` of the embedding.
        bias: whether a bias is generated.
        generator: ``"dense"`` or ``"low_rank"`` (see :class:`ParameterGenerator`).
        rank: rank of the ``"low_rank"`` generator.
        base_weights: give the generators a base tensor initialised like ``nn.Linear``.
        init_std: see :class:`ParameterGenerator` (only without base weights).

    Shapes:
        ``x``: ``(n, *, in_features)`` with ``n = k * B`` (sample index outermost, e.g. Swin windows
        ``(B * num_windows, N, C)``), ``embedding``: ``(B, E)`` or ``(1, E)``; output ``(n, *, out_features)``.
        With a ``(1, E)`` embedding any input shape ``(*, in_features)`` is accepted.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        embedding_dim: int = 96,
        bias: bool = True,
        generator: str = "dense",
        rank: int = 8,
        base_weights: bool = False,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        self.context_key: int | None = None
        base_w, base_b = None, None
        if base_weights:
            layer = nn.Linear(in_features, out_features, bias=bias)
            base_w, base_b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
        kwargs = {"embedding_dim": embedding_dim, "generator": generator, "rank": rank, "init_std": init_std}
        self.weight_generator = ParameterGenerator(shape=(out_features, in_features), base=base_w, **kwargs)
        self.bias_generator = ParameterGenerator(shape=(out_features,), base=base_b, **kwargs) if bias else None

    @classmethod
    def from_module(
        cls,
        module: nn.Linear,
        embedding_dim: int = 96,
        generator: str = "dense",
        rank: int = 8,
        base_weights: bool = True,
        init_std: float | None = None,
    ) -> HyperLinear:
        """Build a hyper layer with the configuration of an ``nn.Linear`` (see :meth:`HyperConv.from_module`)."""
        if type(module) is not nn.Linear:
            raise ValueError(f"HyperLinear.from_module expects nn.Linear, got {type(module).__name__}.")
        layer = cls(
            module.in_features,
            module.out_features,
            embedding_dim=embedding_dim,
            bias=module.bias is not None,
            generator=generator,
            rank=rank,
            init_std=init_std,
        )
        return _copy_base(layer.to(device=module.weight.device, dtype=module.weight.dtype), module, base_weights)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: ``(n, *, in_features)``, ``n`` a multiple of the embedding's batch size.
            embedding: ``(B, E)`` or ``(1, E)``; None to use the embedding of the active context.

        Returns:
            ``(n, *, out_features)``.
        """
        check_tensor(x, "x")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have {self.in_features} features in its last dimension, got {tuple(x.shape)}.")
        embedding = self._embedding(embedding, x.shape[0] if x.ndim > 1 else 1)
        b = embedding.shape[0]
        weight = self.weight_generator(embedding)
        bias = None if self.bias_generator is None else self.bias_generator(embedding)
        if b == 1:
            return F.linear(x, weight[0], None if bias is None else bias[0])
        rows = x.reshape(b, -1, self.in_features)
        out = torch.bmm(rows, weight.transpose(1, 2))
        if bias is not None:
            out = out + bias.unsqueeze(1)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
