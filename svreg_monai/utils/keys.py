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
"""Dictionary keys shared by the data pipeline, engines, handlers and bundle configs."""

from __future__ import annotations

__all__ = ["RegistrationKeys"]


class RegistrationKeys:
    """Keys of the registration data and engine output dictionaries.

    A data item (before collation) holds ``MOVING`` and ``FIXED`` images, shape ``(1, *S)``, and optionally
    ``MOVING_LABEL`` / ``FIXED_LABEL`` integer label maps of the same shape. After the network runs, the
    post-processing (:class:`svreg_monai.transforms.RegistrationPostprocessd`) adds, batched:

    - ``DDF``: ``(B, N, *S)`` displacement of the fixed grid into the moving image, in voxels, channel order =
      array axes;
    - ``WEIGHT``: ``(B, 1, *S)`` regularisation weight map lambda(x);
    - ``VELOCITY``: the integrated velocity field (network resolution);
    - ``WARPED``: ``(B, 1, *S)`` moving image resampled onto the fixed grid;
    - ``WARPED_LABEL``: ``(B, 1, *S)`` moving labels resampled onto the fixed grid (integer values);
    - ``WARPED_LABEL_ONEHOT`` / ``FIXED_LABEL_ONEHOT``: ``(B, K, *S)`` one-hot maps over the evaluated
      structures, ready for :class:`monai.metrics.DiceMetric`; ``MOVING_LABEL_ONEHOT`` is the unregistered moving
      labels on the same structures (the identity baseline).

    ``HYPER`` holds ``(B, H)`` hyperparameter codes of hyper-conditioned networks.
    """

    MOVING = "moving"
    FIXED = "fixed"
    MOVING_LABEL = "moving_label"
    FIXED_LABEL = "fixed_label"
    PRED = "pred"
    DDF = "ddf"
    WEIGHT = "weight"
    VELOCITY = "velocity"
    WARPED = "warped"
    WARPED_LABEL = "warped_label"
    WARPED_LABEL_ONEHOT = "warped_label_onehot"
    FIXED_LABEL_ONEHOT = "fixed_label_onehot"
    MOVING_LABEL_ONEHOT = "moving_label_onehot"
    HYPER = "hyper"
