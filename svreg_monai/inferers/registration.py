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
"""An inferer that runs a fixed-size registration network on images of any smaller size."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.utils import convert_to_tensor

from svreg_monai.utils.io import describe_source
from svreg_monai.utils.outputs import RegistrationOutput

__all__ = ["RegistrationInferer"]


class RegistrationInferer(Inferer):
    """Call a registration network, zero-padding the images to the size the network was built for.

    Networks such as :class:`~svreg_monai.networks.nets.TransMorphTVFSPR` are built for one image size
    (multiples of 32 per axis). With ``spatial_size`` set, this inferer pads ``inputs`` and every positional
    argument with the same spatial shape (the fixed image) with zeros **after** the image along each axis, calls
    the network, and crops the outputs back, so the displacement and λ map are on the input grid and its affine
    still applies. Displacements are in voxels and unaffected by the padding; the velocity field (which may live on
    a coarser grid) is cropped by the same fraction. Other positional arguments (e.g. ``(B, H)`` hyperparameter
    codes) are passed through.

    Args:
        spatial_size: the network's input size; ``None`` calls the network unchanged.
        pad_value: value used for padding (images are intensity-normalised, background 0).

    Raises:
        ValueError: if an image is larger than ``spatial_size`` along some axis (the message names the file).
    """

    def __init__(self, spatial_size: Sequence[int] | None = None, pad_value: float = 0.0) -> None:
        super().__init__()
        if spatial_size is not None:
            spatial_size = tuple(int(s) for s in spatial_size)
            if len(spatial_size) not in (2, 3) or min(spatial_size) < 1:
                raise ValueError(f"spatial_size must be 2 or 3 positive integers, got {spatial_size}.")
        self.spatial_size = spatial_size
        self.pad_value = float(pad_value)

    def _padding(self, image: torch.Tensor) -> list[int]:
        size = self.spatial_size
        assert size is not None
        shape = tuple(image.shape[2:])
        if len(shape) != len(size):
            raise ValueError(
                f"images must have {len(size)} spatial dims to match spatial_size {size}, "
                f"got shape {tuple(image.shape)}{describe_source(image)}."
            )
        if any(s > t for s, t in zip(shape, size)):
            raise ValueError(
                f"image of spatial shape {shape}{describe_source(image)} is larger than the network input size "
                f"{size}; set `image_size` to a multiple of 32 per axis at least as large as the image "
                "(smaller images are zero-padded), or crop/resample the data."
            )
        pad: list[int] = []
        for s, t in zip(reversed(shape), reversed(size)):
            pad += [0, t - s]
        return pad

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``network(inputs, *args, **kwargs)`` on the padded images and crop its outputs.

        Args:
            inputs: ``(B, C, *S)`` moving image (or the ``(B, 2C, *S)`` pair for one-input networks).
            network: the registration network.
            args: further inputs; tensors with the spatial shape of ``inputs`` (the fixed image) are padded too.
        """
        if self.spatial_size is None:
            return network(inputs, *args, **kwargs)
        shape = tuple(inputs.shape[2:])
        pad = self._padding(inputs)
        if not any(pad):
            return network(inputs, *args, **kwargs)

        def _pad(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.ndim == inputs.ndim and tuple(x.shape[2:]) == shape:
                x = convert_to_tensor(x, track_meta=False)
                return F.pad(x, pad, mode="constant", value=self.pad_value)
            if isinstance(x, torch.Tensor) and x.ndim == inputs.ndim:
                self._padding(x)  # raises a clear error for a mismatched second image
                raise ValueError(
                    f"images in a pair must have the same spatial shape, got {shape}{describe_source(inputs)} and "
                    f"{tuple(x.shape[2:])}{describe_source(x)}."
                )
            return x

        out = network(_pad(inputs), *(_pad(a) for a in args), **kwargs)
        return self._crop(out, shape)

    def _crop(self, out: Any, shape: tuple[int, ...]) -> Any:
        size = self.spatial_size
        assert size is not None

        def crop(x: torch.Tensor) -> torch.Tensor:
            grid = x.shape[2:]
            keep = [math.ceil(s * g / t) for s, g, t in zip(shape, grid, size)]
            return x[(slice(None), slice(None), *(slice(0, k) for k in keep))]

        if isinstance(out, RegistrationOutput):
            return RegistrationOutput(*(crop(x) for x in out))
        if isinstance(out, torch.Tensor):
            return crop(out)
        if isinstance(out, (tuple, list)):
            return type(out)(crop(x) if isinstance(x, torch.Tensor) else x for x in out)
        raise TypeError(f"network output must be a RegistrationOutput, tensor or tuple, got {type(out).__name__}.")
