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
"""The hierarchical shifted-window (Swin) transformer encoder of TransMorph, for 2D and 3D images.

Why not :class:`monai.networks.nets.swin_unetr.SwinTransformer`: MONAI's encoder computes a different function
from the TransMorph encoder, so pretrained TransMorph weights could not be reproduced with it:

- MONAI shrinks the window to the feature-map size and switches the shift off wherever the map is not larger than
  the window; TransMorph keeps the window, pads the map to a multiple of it and always shifts (with the attention
  mask), also at the deepest level of the IXI configuration where the map equals one window.
- MONAI returns the *downsampled* stage outputs, normalised by a parameter-free layer norm, and merges patches after
  the last stage too; TransMorph returns each stage's output *before* patch merging through a learned
  ``LayerNorm`` per stage and has no merging after the last stage.
- MONAI's patch merging concatenates the eight sub-grids in another order than TransMorph.

The pieces that do agree are taken from MONAI: :class:`~monai.networks.blocks.PatchEmbed` (padded strided convolution
and layer norm), :class:`~monai.networks.blocks.MLPBlock`, :class:`~monai.networks.layers.DropPath` and the window
partition and its inverse (``window_partition``/``window_reverse`` of ``monai.networks.nets.swin_unetr``).

Every learnable layer is an ordinary ``nn.Linear``/``nn.Conv*d``/``nn.LayerNorm`` module, so a generic
hyper-network wrapper that swaps those modules can condition the encoder.

Tensors inside the encoder are channel-last, ``(B, *S, C)``; the encoder's input and outputs are channel-first.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from monai.networks.blocks import MLPBlock, PatchEmbed
from monai.networks.layers import DropPath
from monai.networks.nets.swin_unetr import window_partition, window_reverse

from svreg_monai.utils.validation import check_spatial_dims, check_tensor

__all__ = [
    "relative_position_index",
    "window_size_from_table",
    "shifted_window_mask",
    "WindowAttention",
    "SwinBlock",
    "PatchMerging",
    "SwinStage",
    "SwinEncoder",
]

# order in which PatchMerging concatenates the 2**N sub-grids (offsets along the spatial axes); the 3D order is the
# TransMorph one, the 2D order the original Swin one.
_MERGE_OFFSETS = {
    2: ((0, 0), (1, 0), (0, 1), (1, 1)),
    3: ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1)),
}


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def relative_position_index(window_size: Sequence[int]) -> torch.Tensor:
    """Index into the relative-position bias table for every pair of tokens of one window.

    Args:
        window_size: window extent per spatial axis.

    Returns:
        ``(N, N)`` long tensor, ``N = prod(window_size)``, with values in ``[0, prod(2 * window_size - 1))``.
    """
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window_size], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, n)
    index = torch.zeros(rel.shape[:2], dtype=torch.long)
    for i, w in enumerate(window_size):
        stride = _prod([2 * v - 1 for v in window_size[i + 1 :]])
        index += (rel[..., i] + w - 1) * stride
    return index


def shifted_window_mask(
    padded_size: Sequence, window_size: Sequence[int], shift_size: Sequence[int], device: torch.device | None = None
) -> torch.Tensor:
    """Additive attention mask of shifted-window attention (0 within a region, -100 across regions).

    After the cyclic shift, a window at the end of an axis holds tokens from both ends of the map; tokens from
    different regions must not attend to each other.

    Args:
        padded_size: the (padded) map size ``S``, multiples of ``window_size``.
        window_size: window extent per spatial axis.
        shift_size: cyclic shift per spatial axis (all > 0).
        device: device of the mask.

    Returns:
        ``(num_windows, N, N)`` float mask, ``N = prod(window_size)``.
    """
    # region of each index along an axis: 0 before the last window, 1 in it before the shift, 2 in the shift; the
    # label of a voxel numbers its regions in row-major order. Built from comparisons rather than by assigning into
    # slices, so that traces and ONNX exports follow the map size (no in-place writes, no empty slices).
    n = len(window_size)
    labels_nd: torch.Tensor | None = None
    for axis, (size, w, s) in enumerate(zip(padded_size, window_size, shift_size)):
        index = torch.arange(size, device=device)
        region = (index >= size - w).long() + (index >= size - s).long()
        region = region.view([-1 if i == axis else 1 for i in range(n)])
        labels_nd = region if labels_nd is None else labels_nd * 3 + region
    assert labels_nd is not None
    img_mask = labels_nd.expand(list(padded_size)).unsqueeze(0).unsqueeze(-1).float()
    labels = window_partition(img_mask, window_size).squeeze(-1)  # (nW, N)
    diff = labels.unsqueeze(1) - labels.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def window_size_from_table(
    table_rows: int, spatial_dims: int, preferred: Sequence[int] | None = None, max_window: int = 32
) -> tuple[int, ...]:
    """The window size of a relative-position bias table with ``table_rows = prod(2 * w_i - 1)`` rows.

    A checkpoint stores the tables, not the window. Several windows can give the same number of rows (e.g. any
    permutation of one), so ``preferred`` is returned when it fits, else the cubic window when one fits, else the
    only fitting window.

    Args:
        table_rows: rows of ``relative_position_bias_table``.
        spatial_dims: 2 or 3.
        preferred: the window to return if it fits (e.g. ``image_size // 32``).
        max_window: largest window extent tried per axis.

    Raises:
        ValueError: when no window fits, or several fit and none is ``preferred`` or cubic, naming them.
    """
    if preferred is not None and _prod([2 * int(w) - 1 for w in preferred]) == table_rows:
        return tuple(int(w) for w in preferred)
    fits = [
        w
        for w in itertools.product(range(1, max_window + 1), repeat=spatial_dims)
        if _prod([2 * v - 1 for v in w]) == table_rows
    ]
    cubic = [w for w in fits if len(set(w)) == 1]
    if cubic:
        return cubic[0]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise ValueError(f"no {spatial_dims}D window of at most {max_window} fits a bias table of {table_rows} rows.")
    raise ValueError(
        f"a bias table of {table_rows} rows fits the windows {fits[:6]}{' ...' if len(fits) > 6 else ''}: give the "
        "window size explicitly."
    )


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias.

    Args:
        dim: token channels ``C``.
        num_heads: attention heads (``dim`` must be divisible by it).
        window_size: window extent per spatial axis.
        qkv_bias: learn a bias for the query/key/value projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        use_sdpa: compute attention with :func:`torch.nn.functional.scaled_dot_product_attention` (same function,
            fused kernel); False computes ``softmax(q k^T / sqrt(d) + bias) v`` explicitly.

    Shapes:
        ``(B * num_windows, N, C) -> (B * num_windows, N, C)`` with ``N = prod(window_size)``; the optional mask is
        ``(num_windows, N, N)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int],
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        use_sdpa: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}).")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = tuple(int(w) for w in window_size)
        self.scale = (dim // num_heads) ** -0.5
        self.use_sdpa = use_sdpa
        self.attn_drop_rate = attn_drop
        table_size = _prod([2 * w - 1 for w in self.window_size])
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_size, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        """Name the window behind a bias table of another size instead of a raw size mismatch."""
        key = prefix + "relative_position_bias_table"
        table = state_dict.get(key)
        own = self.relative_position_bias_table
        if isinstance(table, torch.Tensor) and table.ndim == 2 and table.shape[0] != own.shape[0]:
            try:
                window = f"window_size={list(window_size_from_table(table.shape[0], len(self.window_size)))}"
            except ValueError as e:
                window = f"another window ({e})"
            raise ValueError(
                f"{key} of the checkpoint has {table.shape[0]} rows, trained with {window}, but this network has "
                f"window_size={list(self.window_size)} ({own.shape[0]} rows). The window is fixed by the trained "
                f"weights: build the network with {window.split(' (')[0]} (any input size that is a multiple of 32 "
                "still runs; in a bundle set `window_size`, or leave it to the checkpoint in inference.json)."
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B_, heads, N, d)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, self.num_heads).permute(2, 0, 1)  # (heads, N, N)
        if mask is not None:
            num_windows = mask.shape[0]
            bias = (bias.unsqueeze(0) + mask.unsqueeze(1)).unsqueeze(0)  # (1, nW, heads, N, N)
            bias = bias.expand(b_ // num_windows, -1, -1, -1, -1).reshape(b_, self.num_heads, n, n)
        else:
            bias = bias.unsqueeze(0)
        if self.use_sdpa:
            drop = self.attn_drop_rate if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=drop, scale=self.scale)
        else:
            attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1) + bias, dim=-1)
            out = self.attn_drop(attn) @ v
        out = out.transpose(1, 2).reshape(b_, n, c)
        return self.proj_drop(self.proj(out))


class SwinBlock(nn.Module):
    """Swin transformer block: (shifted-)window attention and an MLP, each with pre-norm and a residual.

    The map is zero-padded (after the first norm) to a multiple of the window and cropped back, as in TransMorph.
    The shift is applied only if every axis has a shift > 0.

    Args:
        dim: token channels ``C``.
        num_heads: attention heads.
        window_size: window extent per spatial axis.
        shift_size: cyclic shift per spatial axis (0 = plain window attention).
        mlp_ratio: hidden channels of the MLP relative to ``dim``.
        qkv_bias: learn a bias for the query/key/value projection.
        drop: dropout rate after the attention projection and in the MLP.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic-depth rate of both residual branches.
        use_sdpa: see :class:`WindowAttention`.

    Shapes:
        ``(B, *S, C) -> (B, *S, C)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int],
        shift_size: Sequence[int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        use_sdpa: bool = True,
    ) -> None:
        super().__init__()
        self.window_size = tuple(int(w) for w in window_size)
        self.shift_size = tuple(int(s) for s in shift_size)
        if len(self.shift_size) != len(self.window_size) or any(
            not 0 <= s < w for s, w in zip(self.shift_size, self.window_size)
        ):
            raise ValueError(
                f"shift_size must satisfy 0 <= shift < window per axis, got {shift_size} for {window_size}."
            )
        self.shifted = min(self.shift_size) > 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window_size, qkv_bias, attn_drop, drop, use_sdpa)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), drop, act="GELU", dropout_mode="swin")

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        n = len(self.window_size)
        # an ONNX export is static-shaped: the TorchScript-based exporter loses the channel sizes behind
        # size-dependent pads and slices, and the decoder's instance norms cannot be exported without them
        onnx_export = torch.onnx.is_in_onnx_export()
        spatial = [int(s) for s in x.shape[1:-1]] if onnx_export else x.shape[1:-1]
        shortcut = x
        x = self.norm1(x)
        pads = [(w - s % w) % w for s, w in zip(spatial, self.window_size)]
        # while tracing (not exporting to ONNX), always take the padding path (pads may be 0) so that the trace also
        # holds for input sizes that need padding
        padded = (torch.jit.is_tracing() and not onnx_export) or any(p > 0 for p in pads)
        if padded:
            pad_arg: list = [0, 0]
            for p in reversed(pads):
                pad_arg += [0, p]
            x = F.pad(x, pad_arg)
        padded_size = [s + p for s, p in zip(spatial, pads)] if onnx_export else x.shape[1:-1]
        dims = list(range(1, n + 1))
        if self.shifted:
            x = torch.roll(x, shifts=[-s for s in self.shift_size], dims=dims)
        windows = self.attn(window_partition(x, self.window_size), mask=attn_mask if self.shifted else None)
        x = window_reverse(windows, self.window_size, [x.shape[0], *padded_size])
        if self.shifted:
            x = torch.roll(x, shifts=list(self.shift_size), dims=dims)
        if padded:
            x = x[(slice(None), *[slice(0, s) for s in spatial], slice(None))]
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Concatenate the ``2**N`` sub-grids of stride 2 and project ``2**N * C`` to ``2 * C`` channels.

    In 3D this is TransMorph's merging with ``pat_merg_rf=4`` (``8C -> 8C/4``): layer norm over ``8C``, then a
    bias-free linear map.

    Args:
        spatial_dims: 2 or 3.
        dim: input channels ``C``.

    Shapes:
        ``(B, *S, C) -> (B, *(S / 2), 2C)``; every ``S[i]`` must be even.
    """

    def __init__(self, spatial_dims: int, dim: int) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.offsets = _MERGE_OFFSETS[self.spatial_dims]
        merged = len(self.offsets) * dim
        self.norm = nn.LayerNorm(merged)
        self.reduction = nn.Linear(merged, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[(slice(None), *[slice(o, None, 2) for o in off], slice(None))] for off in self.offsets]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class SwinStage(nn.Module):
    """A stage of Swin blocks (alternating plain and shifted windows) and an optional patch merging.

    Args:
        spatial_dims: 2 or 3.
        dim: token channels ``C``.
        depth: number of blocks.
        num_heads: attention heads.
        window_size: window extent per spatial axis; the shift of odd blocks is ``window_size // 2``.
        mlp_ratio, qkv_bias, drop, attn_drop, use_sdpa: see :class:`SwinBlock`.
        drop_path: stochastic-depth rate per block.
        downsample: append a :class:`PatchMerging`.
        use_checkpoint: recompute each block in the backward pass (less memory, more time).

    Shapes:
        ``(B, *S, C) -> ((B, *S, C), (B, *(S / 2), 2C) or None)``: the stage output and its merged version.
    """

    def __init__(
        self,
        spatial_dims: int,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: Sequence[int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        downsample: bool = False,
        use_checkpoint: bool = False,
        use_sdpa: bool = True,
    ) -> None:
        super().__init__()
        self.window_size = tuple(int(w) for w in window_size)
        self.shift_size = tuple(w // 2 for w in self.window_size)
        self.use_checkpoint = use_checkpoint
        rates = list(drop_path) if len(drop_path) else [0.0] * depth
        self.blocks = nn.ModuleList(
            [
                SwinBlock(
                    dim,
                    num_heads,
                    self.window_size,
                    (0,) * len(self.window_size) if i % 2 == 0 else self.shift_size,
                    mlp_ratio,
                    qkv_bias,
                    drop,
                    attn_drop,
                    rates[i],
                    use_sdpa,
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(spatial_dims, dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = None
        if any(blk.shifted for blk in self.blocks):
            size = [int(s) for s in x.shape[1:-1]] if torch.onnx.is_in_onnx_export() else x.shape[1:-1]
            padded = [(s + w - 1) // w * w for s, w in zip(size, self.window_size)]
            mask = shifted_window_mask(padded, self.window_size, self.shift_size, device=x.device).to(x.dtype)
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint.checkpoint(blk, x, mask, use_reentrant=False)
            else:
                x = blk(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else None)


class SwinEncoder(nn.Module):
    """TransMorph's Swin transformer encoder: patch embedding, ``len(depths)`` stages, one learned norm per output.

    Stage ``i`` works on ``embed_dim * 2**i`` channels at ``1 / (patch_size * 2**i)`` of the input size.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        embed_dim: channels of the patch embedding.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: window extent per spatial axis (one int for all axes, or one per axis).
        patch_size: patch embedding size and stride.
        mlp_ratio: MLP hidden channels relative to the stage channels.
        qkv_bias: learn a bias for the query/key/value projections (TransMorph: False).
        drop_rate: dropout rate (after the embedding, in attention projections and MLPs).
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, increasing linearly from 0 to this over all blocks.
        patch_norm: layer norm after the patch embedding.
        use_checkpoint: gradient checkpointing of every block.
        use_sdpa: fused attention, see :class:`WindowAttention`.

    Shapes:
        ``(B, in_channels, *S) -> [(B, embed_dim * 2**i, *(S / (patch_size * 2**i))) for each stage i]``. Every
        ``S[j]`` must be divisible by ``patch_size * 2**(len(depths) - 1)``; windows need not divide the maps (they
        are padded).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        embed_dim: int = 96,
        depths: Sequence[int] = (4, 4, 5),
        num_heads: Sequence[int] = (8, 8, 8),
        window_size: Sequence[int] | int = 5,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        use_sdpa: bool = True,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if len(depths) != len(num_heads) or len(depths) < 1:
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must have the same length >= 1.")
        ws = (window_size,) * spatial_dims if isinstance(window_size, int) else tuple(window_size)
        if len(ws) != spatial_dims or any(int(w) < 1 for w in ws):
            raise ValueError(f"window_size must be {spatial_dims} positive integers, got {window_size}.")
        self.window_size = tuple(int(w) for w in ws)
        self.patch_size = int(patch_size)
        self.num_stages = len(depths)
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(
            patch_size=self.patch_size,
            in_chans=in_channels,
            embed_dim=embed_dim,
            norm_layer=nn.LayerNorm if patch_norm else None,  # type: ignore[arg-type]
            spatial_dims=spatial_dims,
        )
        self.pos_drop = nn.Dropout(drop_rate)
        # stochastic depth grows linearly over the blocks (plain Python, so the encoder also builds on the meta device)
        n_blocks = sum(depths)
        rates = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.num_features = [embed_dim * 2**i for i in range(self.num_stages)]
        self.layers = nn.ModuleList()
        for i in range(self.num_stages):
            self.layers.append(
                SwinStage(
                    spatial_dims,
                    self.num_features[i],
                    depths[i],
                    num_heads[i],
                    self.window_size,
                    mlp_ratio,
                    qkv_bias,
                    drop_rate,
                    attn_drop_rate,
                    rates[sum(depths[:i]) : sum(depths[: i + 1])],
                    downsample=i < self.num_stages - 1,
                    use_checkpoint=use_checkpoint,
                    use_sdpa=use_sdpa,
                )
            )
        self.norms = nn.ModuleList([nn.LayerNorm(c) for c in self.num_features])

    @property
    def size_divisor(self) -> int:
        """Every input axis must be a multiple of this (patch size times the merging factor of the stages)."""
        return self.patch_size * 2 ** (self.num_stages - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_tensor(x, "x", ndim=self.spatial_dims + 2)
        x = self.patch_embed(x)
        # non-negative dims: the TorchScript-based ONNX exporter writes a negative movedim dim into the Transpose
        # permutation, which ONNX Runtime rejects
        x = self.pos_drop(x.movedim(1, x.ndim - 1))
        outs = []
        for layer, norm in zip(self.layers, self.norms):
            out, down = layer(x)
            outs.append(norm(out).movedim(out.ndim - 1, 1).contiguous())
            if down is not None:
                x = down
        return outs
