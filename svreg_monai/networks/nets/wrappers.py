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

import torch
import torch.nn as nn

__all__ = ["DDFOnly"]


class DDFOnly(nn.Module):
    """Expose a registration network as a one-input, one-output module returning the displacement only.

    MONAI bundles (``verify_net_in_out``), TorchScript tracing and ONNX export expect ``forward(image)`` with a
    single tensor. This wrapper splits the channels of that tensor into the moving and fixed images, calls
    ``net(moving, fixed)`` and returns the ``ddf`` field of its output
    (:class:`~svreg_monai.networks.nets.outputs.RegistrationOutput`, or the first element of a tuple).

    Args:
        net: a network with ``forward(moving, fixed)``, e.g. :class:`TransMorphTVFSPR`.

    Shapes:
        ``(B, 2C, *S) -> (B, N, *S)``: channels ``[:C]`` are the moving image, ``[C:]`` the fixed image; the
        output is the displacement in voxels, channel order = array axes.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or image.ndim not in (4, 5) or image.shape[1] % 2:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"image must be a (B, 2C, *S) tensor with the moving then the fixed image on the channels, got {shape}."
            )
        c = image.shape[1] // 2
        out = self.net(image[:, :c], image[:, c:])
        return out[0]
