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

import tempfile
from unittest import mock

import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor, list_data_collate
from parameterized import parameterized

from svreg_monai.handlers import RegistrationTensorBoardImageHandler
from svreg_monai.utils import RegistrationKeys as K
from svreg_monai.visualize import grid_image

DEFAULT_TAGS = ["fixed", "moving", "warped", "weight", "deformed_grid", "log_jacobian"]


def make_output(shape: tuple[int, ...] = (8, 9, 6)) -> dict:
    """Batched output of two pairs; sample 1 has a constant weight 0.25 and a zero ddf."""
    n = len(shape)
    items = []
    for b in range(2):
        affine = torch.diag(torch.tensor([2.0, 1.5, 1.0, 1.0][: n + 1], dtype=torch.float64))
        affine[0, n] = 7.0
        meta = {"filename_or_obj": f"/data/sub-{b}/img.nii.gz"}
        items.append(
            {
                K.FIXED: MetaTensor(torch.rand(1, *shape) * 10, affine=affine, meta=dict(meta)),
                K.MOVING: MetaTensor(torch.rand(1, *shape), affine=affine.clone(), meta=dict(meta)),
            }
        )
    batch = list_data_collate(items)
    batch[K.WARPED] = batch[K.MOVING].as_tensor().clone()
    batch[K.WEIGHT] = torch.stack([torch.rand(1, *shape), torch.full((1, *shape), 0.25)])
    batch[K.DDF] = torch.stack([torch.randn(n, *shape), torch.zeros(n, *shape)])
    return batch


def run(handler, output, epochs: int = 1, epoch_length: int = 1) -> Engine:
    engine = Engine(lambda e, b: output)
    handler.attach(engine)
    engine.run(list(range(epoch_length)), max_epochs=epochs)
    return engine


def calls(writer: mock.MagicMock) -> list[tuple[str, int]]:
    return [(c.args[0], c.args[2]) for c in writer.add_image.call_args_list]


@parameterized.expand([((8, 9, 6),), ((8, 9),)])
def test_epoch_level_writes_expected_images(shape):
    writer = mock.MagicMock()
    handler = RegistrationTensorBoardImageHandler(summary_writer=writer, batch_index=1, tag_prefix="val/")
    run(handler, make_output(shape), epochs=2)
    assert calls(writer) == [(f"val/{t}", step) for step in (1, 2) for t in DEFAULT_TAGS]
    images = {c.args[0]: c.args[1] for c in writer.add_image.call_args_list}
    for c in writer.add_image.call_args_list:
        assert c.kwargs == {"dataformats": "CHW"}
    for img in images.values():
        assert img.shape == (1, 8, 9) and img.min() >= 0 and img.max() <= 1
    assert torch.allclose(images["val/weight"], torch.full((1, 8, 9), 0.25))  # not normalised
    assert torch.equal(images["val/log_jacobian"], torch.full((1, 8, 9), 0.5))  # zero ddf: no volume change
    in_plane = None if len(shape) == 2 else (0, 1)
    grid = grid_image(shape, spacing=8, axes=in_plane)[0, 0]
    assert torch.equal(images["val/deformed_grid"][0], grid if len(shape) == 2 else grid[..., shape[-1] // 2])


def test_iteration_level_interval_and_step_transform():
    writer = mock.MagicMock()
    handler = RegistrationTensorBoardImageHandler(
        summary_writer=writer, interval=2, epoch_level=False, panels=["fixed"], step_transform=lambda e: 100
    )
    run(handler, make_output(), epochs=1, epoch_length=4)
    assert calls(writer) == [("fixed", 100), ("fixed", 100)]
    writer = mock.MagicMock()
    handler = RegistrationTensorBoardImageHandler(summary_writer=writer, epoch_level=False, panels=["difference"])
    run(handler, make_output(), epochs=1, epoch_length=3)
    assert calls(writer) == [("difference", 1), ("difference", 2), ("difference", 3)]


def test_missing_keys_and_batch_index_are_skipped():
    output = make_output()
    del output[K.WEIGHT], output[K.DDF]
    writer = mock.MagicMock()
    run(RegistrationTensorBoardImageHandler(summary_writer=writer), output)
    assert calls(writer) == [("fixed", 1), ("moving", 1), ("warped", 1)]
    writer = mock.MagicMock()
    run(RegistrationTensorBoardImageHandler(summary_writer=writer, batch_index=5), make_output())
    run(RegistrationTensorBoardImageHandler(summary_writer=writer), {"loss": torch.tensor(1.0)})
    assert writer.add_image.call_count == 0


def test_output_transform_and_decollated_list():
    output = make_output()
    samples = [{k: v[b] for k, v in output.items()} for b in range(2)]
    writer = mock.MagicMock()
    handler = RegistrationTensorBoardImageHandler(summary_writer=writer, output_transform=lambda o: o["pred"])
    run(handler, {"pred": samples})
    assert [t for t, _ in calls(writer)] == DEFAULT_TAGS


def test_event_file_contains_tags():
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as d:
        handler = RegistrationTensorBoardImageHandler(log_dir=d, tag_prefix="val/")
        run(handler, make_output((8, 9)), epochs=2)
        handler.close()
        acc = EventAccumulator(d, size_guidance={"images": 0})
        acc.Reload()
        assert sorted(acc.Tags()["images"]) == sorted(f"val/{t}" for t in DEFAULT_TAGS)
        events = acc.Images("val/weight")
        assert [e.step for e in events] == [1, 2]
        assert (events[0].height, events[0].width) == (8, 9)


def test_argument_errors():
    writer = mock.MagicMock()
    with pytest.raises(ValueError, match="bogus"):
        RegistrationTensorBoardImageHandler(summary_writer=writer, panels=["bogus"])
    with pytest.raises(ValueError, match="-1"):
        RegistrationTensorBoardImageHandler(summary_writer=writer, batch_index=-1)
    with pytest.raises(ValueError, match="0"):
        RegistrationTensorBoardImageHandler(summary_writer=writer, interval=0)
