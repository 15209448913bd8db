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

from svreg_monai.networks.nets.outputs import RegistrationOutput
from svreg_monai.transforms import RegistrationPostprocessd, to_label_tensor


def _data(ddf):
    labels = torch.zeros(1, 1, 8, 8, 8)
    labels[:, :, 2:6, 2:6, 2:6] = 1
    labels[:, :, 3:5, 3:5, 3:5] = 2
    image = labels / 2
    pred = RegistrationOutput(ddf, torch.zeros(1, 3, 4, 4, 4), torch.full((1, 1, 8, 8, 8), 0.3))
    return {"moving": image, "fixed": image, "moving_label": labels, "fixed_label": labels, "pred": pred}


@pytest.mark.parametrize("interp", ["nearest", "linear"])
def test_identity(interp):
    d = RegistrationPostprocessd(label_values=[1, 2], label_interp=interp)(_data(torch.zeros(1, 3, 8, 8, 8)))
    torch.testing.assert_close(d["warped"], d["moving"])
    assert torch.equal(d["warped_label"], d["moving_label"].long())
    assert d["warped_label_onehot"].shape == (1, 2, 8, 8, 8)
    assert torch.equal(d["warped_label_onehot"], d["fixed_label_onehot"])
    assert torch.equal(d["moving_label_onehot"], d["fixed_label_onehot"])
    torch.testing.assert_close(d["weight"], torch.full((1, 1, 8, 8, 8), 0.3))


def test_integer_shift():
    ddf = torch.zeros(1, 3, 8, 8, 8)
    ddf[:, 0] = 1.0  # out(x) = moving(x + e0)
    d = RegistrationPostprocessd(label_values=[1])(_data(ddf))
    expected = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    expected[:, :, :7] = d["moving_label"].long()[:, :, 1:]
    assert torch.equal(d["warped_label"], expected)


def test_tensor_pred_and_no_labels():
    d = RegistrationPostprocessd()({"moving": torch.rand(1, 1, 4, 4), "pred": torch.zeros(1, 2, 4, 4)})
    assert d["ddf"].shape == (1, 2, 4, 4) and "warped_label" not in d


def test_errors():
    with pytest.raises(ValueError, match="label_interp"):
        RegistrationPostprocessd(label_interp="cubic")
    with pytest.raises(ValueError, match="'pred'"):
        RegistrationPostprocessd()({"moving": torch.rand(1, 1, 4, 4)})
    with pytest.raises(ValueError, match="integer label values"):
        to_label_tensor(torch.tensor([0.5, 1.0]), "labels")
