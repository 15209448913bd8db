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
"""Wrappers that adapt the registration networks to MONAI bundle / model-zoo conventions."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch
import torch.nn as nn

__all__ = ["DDFOnly"]

_NET = "net"


def _strip_net_prefix(
    module: nn.Module, state_dict: MutableMapping[str, Any], prefix: str, local_metadata: Any
) -> None:
    """State-dict post-hook of :class:`DDFOnly`: ``<prefix>net.<key>`` -> ``<prefix><key>``, in place.

    The renamed entries are the last ones of ``state_dict`` (the wrapper's sub-tree was just written), so popping
    and re-inserting them keeps the order. The ``_metadata`` of the sub-modules is renamed the same way.
    """
    inner = f"{prefix}{_NET}."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if k == prefix + _NET or k.startswith(inner)]:
            value = metadata.pop(key)
            metadata[prefix[:-1] if key == prefix + _NET else prefix + key[len(inner) :]] = value


class DDFOnly(nn.Module):
    """Expose a registration network as a one-input, one-output module returning the displacement only.

    MONAI bundles (``verify_net_in_out``), TorchScript tracing and ONNX export expect ``forward(image)`` with a
    single tensor. This wrapper splits the channels of that tensor into the moving and fixed images, calls
    ``net(moving, fixed)`` and returns the ``ddf`` field of its output
    (:class:`~svreg_monai.networks.nets.outputs.RegistrationOutput`, or the first element of a tuple).

    The wrapper is transparent for checkpoints: its ``state_dict()`` has the keys of ``net.state_dict()`` (no
    ``net.`` prefix), and ``load_state_dict`` accepts the inner network's keys as well as ``net.``-prefixed ones
    (strict key checking applies as usual). So weights saved from the bare network (e.g. a bundle's
    ``models/model.pt``) load into the wrapper and the other way round, which is what ``monai.bundle``'s
    ``ckpt_export``/``onnx_export`` (``load_state_dict``) and ``monai.bundle.load`` (``copy_model_state``, which
    matches the keys of ``state_dict()``) need. ``named_parameters()`` keeps the ``net.`` prefix.

    Args:
        net: a network with ``forward(moving, fixed)``, e.g. :class:`TransMorphTVFSPR`.

    Shapes:
        ``(B, 2C, *S) -> (B, N, *S)``: channels ``[:C]`` are the moving image, ``[C:]`` the fixed image; the
        output is the displacement in voxels, channel order = array axes.

    Raises:
        TypeError: if ``net`` is not a :class:`torch.nn.Module`, or other arguments are given (the wrapped network's
            options belong to ``net``).
    """

    def __init__(self, net: nn.Module, **kwargs: Any) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(
                f"DDFOnly only wraps `net`; got {sorted(kwargs)}, which are options of the wrapped network: set them "
                "on the network given as `net`."
            )
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}.")
        self.net = net
        self.register_state_dict_post_hook(_strip_net_prefix)
        self.register_load_state_dict_pre_hook(DDFOnly._add_net_prefix)

    @staticmethod
    def _add_net_prefix(
        module: DDFOnly,
        state_dict: MutableMapping[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Load-state-dict pre-hook: ``<prefix><key>`` -> ``<prefix>net.<key>`` when the keys are the inner
        network's (more of them match ``net.state_dict()`` unprefixed than prefixed); a no-op otherwise."""
        local = [k[len(prefix) :] for k in state_dict if k.startswith(prefix)]
        if not local:
            return
        own = set(module.net.state_dict(keep_vars=True))
        unprefixed = sum(k in own for k in local)
        prefixed = sum(k.startswith(f"{_NET}.") and k[len(_NET) + 1 :] in own for k in local)
        if unprefixed <= prefixed:
            return
        for key in local:
            state_dict[f"{prefix}{_NET}.{key}"] = state_dict.pop(prefix + key)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or image.ndim not in (4, 5) or image.shape[1] % 2:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"image must be a (B, 2C, *S) tensor with the moving then the fixed image on the channels, got {shape}."
            )
        c = image.shape[1] // 2
        out = self.net(image[:, :c], image[:, c:])
        return out[0]
