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
"""The hyperparameter embedding network of hyper-conditioned registration models (HyperMorph style)."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.layers.utils import get_act_layer

from svreg_monai.utils.validation import check_positive_int, check_tensor

__all__ = ["HyperNetwork"]


class HyperNetwork(nn.Module):
    """Multi-layer perceptron embedding a hyperparameter vector.

    ``layers`` fully connected layers, each followed by the activation: ``P -> hidden -> ... -> hidden``. With the
    defaults (6 layers of 96 units, ReLU after every layer including the last) this is the embedding network of the
    Hyper-TransMorph-SPR reference; the non-negative output is then mapped to layer weights by the hyper layers
    (:class:`~svreg_monai.networks.layers.HyperConv`, :class:`~svreg_monai.networks.layers.HyperLinear`).

    Args:
        num_hyper_params: length ``P`` of the hyperparameter vector (the reference conditions on 2 codes).
        hidden: width of every layer and of the embedding.
        layers: number of fully connected layers (>= 1).
        act: activation after every layer (a MONAI activation name or ``(name, kwargs)``); ``None`` for none.

    Shapes:
        ``(B, P) -> (B, hidden)``. A ``(P,)`` vector is treated as a batch of one.

    Example::

        net = HyperNetwork(num_hyper_params=2)
        embedding = net(torch.rand(4, 2))  # (4, 96)
    """

    def __init__(
        self, num_hyper_params: int, hidden: int = 96, layers: int = 6, act: str | tuple | None = "relu"
    ) -> None:
        super().__init__()
        for name, value in (("num_hyper_params", num_hyper_params), ("hidden", hidden), ("layers", layers)):
            check_positive_int(value, name)
        self.num_hyper_params = num_hyper_params
        self.hidden = hidden
        modules: list[nn.Module] = []
        width = num_hyper_params
        for _ in range(layers):
            modules.append(nn.Linear(width, hidden))
            if act is not None:
                modules.append(get_act_layer(act))
            width = hidden
        self.mlp = nn.Sequential(*modules)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """
        Args:
            codes: ``(B, P)`` hyperparameter codes (or ``(P,)``).

        Returns:
            ``(B, hidden)`` embedding.
        """
        check_tensor(codes, "codes", ndim=(1, 2))
        if codes.ndim == 1:
            codes = codes.unsqueeze(0)
        if codes.shape[1] != self.num_hyper_params:
            raise ValueError(
                f"codes must have shape (B, {self.num_hyper_params}) (one row of hyperparameters per sample), "
                f"got {tuple(codes.shape)}."
            )
        return self.mlp(codes)

    def extra_repr(self) -> str:
        return f"num_hyper_params={self.num_hyper_params}, hidden={self.hidden}"
