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
"""Loading checkpoints of the reference TM-SPR implementation into :class:`TransMorphTVFSPR`.

The reference (``TransMorphTVFSPR`` of the authors' ``IXI/models/TransMorph.py``) saves
``{"state_dict": model.state_dict(), ...}``, possibly with ``module.`` prefixes from ``DataParallel``. Its parameter
tensors have the same shapes as ours; only the names differ:

==========================================================  ====================================================
reference                                                   svreg-monai
==========================================================  ====================================================
``transformer.patch_embed.*``                               ``encoder.patch_embed.*``
``transformer.layers.i.blocks.j.mlp.fc{1,2}.*``             ``encoder.layers.i.blocks.j.mlp.linear{1,2}.*``
``transformer.layers.i.blocks.j.{norm1,attn,norm2}.*``      ``encoder.layers.i.blocks.j.{norm1,attn,norm2}.*``
``transformer.layers.i.downsample.*``                       ``encoder.layers.i.downsample.*``
``transformer.norm{i}.*``                                   ``encoder.norms.i.*``
``up{k}.conv{1,2}.0.weight``                                ``decoder.k.conv{1,2}.conv.weight``
``c1.0.weight`` / ``c1.1.*``                                ``conv_skip.conv.weight`` / ``conv_skip.adn.N.*``
``cs.t.0.weight`` / ``cs.t.1.*``                            ``step_skips.t.conv.weight`` / ``step_skips.t.adn.N.*``
``up3s.t.conv{1,2}.0.weight``                               ``step_decoders.t.conv{1,2}.conv.weight``
``reg_heads.t.0.*``                                         ``velocity_heads.t.conv.*``
``sigma_{0,1}.0.weight`` / ``sigma_{0,1}.1.*``              ``weight_head.conv{0,1}.conv.weight`` / ``...adn.N.*``
``sigma_2.*``                                               ``weight_head.out.conv.*``
==========================================================  ====================================================

Dropped: the identity grids of the reference's spatial transformers (``*.grid``), the relative-position index
buffers (``*.relative_position_index``, recomputed from the window size) and ``reg_head.*``, a registration head
that the reference constructs but never calls.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn as nn

__all__ = ["convert_reference_checkpoint", "REFERENCE_DROPPED_PATTERNS"]

# reference keys with no counterpart in svreg-monai (buffers that are recomputed, and an unused head)
REFERENCE_DROPPED_PATTERNS = (
    r"^(.+\.)?grid$",
    r"^transformer\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$",
    r"^reg_head\.0\.(weight|bias)$",
)

_BLOCK = r"^transformer\.layers\.(\d+)\.blocks\.(\d+)\."
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_RULES: tuple[tuple[str, str], ...] = (
    (r"^transformer\.patch_embed\.(proj|norm)\.(weight|bias)$", r"encoder.patch_embed.\1.\2"),
    (_BLOCK + r"mlp\.fc([12])\.(weight|bias)$", r"encoder.layers.\1.blocks.\2.mlp.linear\3.\4"),
    (_BLOCK + r"(norm1|norm2|attn\.qkv|attn\.proj)\.(weight|bias)$", r"encoder.layers.\1.blocks.\2.\3.\4"),
    (_BLOCK + r"attn\.relative_position_bias_table$", r"encoder.layers.\1.blocks.\2.attn.relative_position_bias_table"),
    (
        r"^transformer\.layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)$",
        r"encoder.layers.\1.downsample.\2",
    ),
    (r"^transformer\.norm(\d+)\.(weight|bias)$", r"encoder.norms.\1.\2"),
    (r"^up(\d+)\.conv([12])\.0\.weight$", r"decoder.\1.conv\2.conv.weight"),
    (r"^c1\.0\.weight$", r"conv_skip.conv.weight"),
    (r"^c1\.1\." + _BN + "$", r"conv_skip.adn.N.\1"),
    (r"^cs\.(\d+)\.0\.weight$", r"step_skips.\1.conv.weight"),
    (r"^cs\.(\d+)\.1\." + _BN + "$", r"step_skips.\1.adn.N.\2"),
    (r"^up3s\.(\d+)\.conv([12])\.0\.weight$", r"step_decoders.\1.conv\2.conv.weight"),
    (r"^reg_heads\.(\d+)\.0\.(weight|bias)$", r"velocity_heads.\1.conv.\2"),
    (r"^sigma_([01])\.0\.weight$", r"weight_head.conv\1.conv.weight"),
    (r"^sigma_([01])\.1\." + _BN + "$", r"weight_head.conv\1.adn.N.\2"),
    (r"^sigma_2\.(weight|bias)$", r"weight_head.out.conv.\1"),
)

# keys that must be present for every stage / block / time step found in the checkpoint (optional biases and
# normalisation statistics are not listed)
_REQUIRED_GLOBAL = (
    "encoder.patch_embed.proj.weight",
    "conv_skip.conv.weight",
    "weight_head.conv0.conv.weight",
    "weight_head.conv1.conv.weight",
    "weight_head.out.conv.weight",
    "weight_head.out.conv.bias",
)
_REQUIRED_BLOCK = (
    "norm1.weight",
    "norm1.bias",
    "attn.relative_position_bias_table",
    "attn.qkv.weight",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.linear1.weight",
    "mlp.linear1.bias",
    "mlp.linear2.weight",
    "mlp.linear2.bias",
)
_REQUIRED_STEP = (
    "step_skips.{t}.conv.weight",
    "step_decoders.{t}.conv1.conv.weight",
    "step_decoders.{t}.conv2.conv.weight",
    "velocity_heads.{t}.conv.weight",
    "velocity_heads.{t}.conv.bias",
)


def _unwrap(checkpoint: Mapping) -> Mapping:
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"expected a state dict or a checkpoint dict, got {type(checkpoint).__name__}.")
    for key in ("state_dict", "model_state_dict", "model"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            return inner
    return checkpoint


def _missing_in_structure(converted: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys that a complete checkpoint with the stages, blocks and steps present in ``converted`` would have."""
    required = set(_REQUIRED_GLOBAL)
    stages: dict[int, set[int]] = {}
    steps: set[int] = set()
    decoders: set[int] = set()
    for key in converted:
        m = re.match(r"^encoder\.(?:layers|norms)\.(\d+)\.(?:blocks\.(\d+)\.)?", key)
        if m:
            blocks = stages.setdefault(int(m.group(1)), set())
            if m.group(2) is not None:
                blocks.add(int(m.group(2)))
        m = re.match(r"^(?:step_skips|step_decoders|velocity_heads)\.(\d+)\.", key)
        if m:
            steps.add(int(m.group(1)))
        m = re.match(r"^decoder\.(\d+)\.", key)
        if m:
            decoders.add(int(m.group(1)))
    num_stages = max(stages) + 1 if stages else 0
    for i in range(num_stages):
        required |= {f"encoder.norms.{i}.weight", f"encoder.norms.{i}.bias"}
        blocks = stages.get(i, set())
        for j in range(max(blocks) + 1 if blocks else 1):
            required |= {f"encoder.layers.{i}.blocks.{j}.{name}" for name in _REQUIRED_BLOCK}
        if i < num_stages - 1:
            required.add(f"encoder.layers.{i}.downsample.reduction.weight")
    for k in range(max(num_stages, max(decoders) + 1 if decoders else 0)):
        required |= {f"decoder.{k}.conv1.conv.weight", f"decoder.{k}.conv2.conv.weight"}
    for t in range(max(steps) + 1 if steps else 1):
        required |= {name.format(t=t) for name in _REQUIRED_STEP}
    return sorted(required - set(converted))


def convert_reference_checkpoint(
    state_dict: Mapping[str, torch.Tensor] | Mapping[str, object], model: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Rename the reference TM-SPR ``state_dict`` to :class:`~svreg_monai.networks.nets.TransMorphTVFSPR` names.

    Args:
        state_dict: the reference model's ``state_dict()``, or a checkpoint dict holding it under ``"state_dict"``
            (as the reference training script saves it). ``module.`` prefixes (``DataParallel``) are stripped.
        model: optionally the target network; then the converted keys and shapes are checked against its
            ``state_dict()`` exactly.

    Returns:
        a new ``state_dict`` for ``TransMorphTVFSPR(...).load_state_dict(..., strict=True)`` (tensors are shared,
        not copied).

    Raises:
        ValueError: naming the reference keys that match no known parameter, the keys a complete checkpoint would
            have but this one lacks, and (with ``model``) the keys or shapes that differ from the model's.

    Example::

        ckpt = torch.load("dsc0.7xx.pth.tar", map_location="cpu")
        net = TransMorphTVFSPR(img_size=(160, 192, 224))
        net.load_state_dict(convert_reference_checkpoint(ckpt, model=net))
    """
    source = _unwrap(state_dict)
    converted: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for raw_key, value in source.items():
        key = str(raw_key)
        while key.startswith("module."):
            key = key[len("module.") :]
        if any(re.match(p, key) for p in REFERENCE_DROPPED_PATTERNS):
            continue
        for pattern, target in _RULES:
            if re.match(pattern, key):
                new_key = re.sub(pattern, target, key)
                if new_key in converted:
                    raise ValueError(f"reference key {raw_key!r} maps to {new_key!r}, which is already present.")
                if not isinstance(value, torch.Tensor):
                    raise ValueError(f"reference key {raw_key!r} holds a {type(value).__name__}, not a tensor.")
                converted[new_key] = value
                break
        else:
            unexpected.append(str(raw_key))
    if unexpected:
        raise ValueError(
            f"unexpected keys with no counterpart in TransMorphTVFSPR: {unexpected}. Is this a TransMorphTVFSPR "
            "checkpoint of the reference implementation?"
        )
    missing = _missing_in_structure(converted)
    if missing:
        raise ValueError(f"the checkpoint is incomplete; missing keys (in svreg-monai names): {missing}.")
    if model is not None:
        target = model.state_dict()
        missing = sorted(set(target) - set(converted))
        extra = sorted(set(converted) - set(target))
        if missing or extra:
            raise ValueError(
                f"the converted checkpoint does not match the model: missing keys {missing}, unexpected keys {extra} "
                "(different depths, time_steps or norm?)."
            )
        shapes = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
            for k, v in converted.items()
            if tuple(v.shape) != tuple(target[k].shape)
        ]
        if shapes:
            raise ValueError(f"shape mismatch (different embed_dim, window_size or heads?): {shapes}.")
    return converted
