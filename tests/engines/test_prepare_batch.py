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
from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from svreg_monai.engines import RegistrationPrepareBatch


def _batch(b=2, shape=(6, 6, 6)):
    return {
        "moving": torch.rand(b, 1, *shape),
        "fixed": torch.rand(b, 1, *shape),
        "moving_label": torch.randint(0, 3, (b, 1, *shape)),
        "fixed_label": torch.randint(0, 3, (b, 1, *shape)),
    }


def test_inputs_targets_args():
    batch = _batch()
    inputs, targets, args, kwargs = RegistrationPrepareBatch()(batch, "cpu")
    assert inputs is batch["moving"] or torch.equal(inputs, batch["moving"])
    assert len(args) == 1 and torch.equal(args[0], batch["fixed"]) and kwargs == {}
    assert set(targets) == {"moving", "fixed", "moving_label", "fixed_label"}


def test_hyper_sampler_and_loss_mapping():
    sampler = lambda b, device: torch.full((b, 2), 0.5, device=device)  # noqa: E731
    mapping = lambda h: {"lambda_max": 5 * h[:, 1], "prior_param": 1 + 0.2 * h[:, 0]}  # noqa: E731
    _, targets, args, _ = RegistrationPrepareBatch(hyper_sampler=sampler, hyper_to_loss=mapping)(_batch(), "cpu")
    assert args[1].shape == (2, 2)
    torch.testing.assert_close(targets["lambda_max"], torch.full((2,), 2.5))
    torch.testing.assert_close(targets["prior_param"], torch.full((2,), 1.1))


def test_batch_codes_take_precedence():
    batch = _batch()
    batch["hyper"] = torch.zeros(2, 2)
    _, targets, args, _ = RegistrationPrepareBatch(hyper_sampler=lambda b, d: torch.ones(b, 2))(batch, "cpu")
    assert torch.equal(args[1], torch.zeros(2, 2))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda b: b.pop("fixed"), "no 'fixed' image"),
        (lambda b: b.__setitem__("fixed", torch.rand(2, 1, 6, 6, 5)), "same batch size and spatial shape"),
        (lambda b: b.__setitem__("moving", torch.rand(6, 6)), r"\(B, C, \*S\)"),
        (lambda b: b.__setitem__("hyper", torch.zeros(3, 2)), r"\(B, H\)"),
    ],
)
def test_errors(mutate, match):
    batch = _batch()
    mutate(batch)
    with pytest.raises(ValueError, match=match):
        RegistrationPrepareBatch()(batch, "cpu")


def test_nan_image_names_file():
    batch = _batch(b=1)
    image = torch.rand(1, 1, 6, 6, 6)
    image[0, 0, 1, 1, 1] = float("nan")
    batch["fixed"] = MetaTensor(image, meta={"filename_or_obj": ["sub-003/T1.nii.gz"]})
    with pytest.raises(ValueError, match=r"fixed image contains NaN.*sub-003/T1\.nii\.gz"):
        RegistrationPrepareBatch()(batch, "cpu")
