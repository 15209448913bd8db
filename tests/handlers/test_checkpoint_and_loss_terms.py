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
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointSaver

from svreg_monai.handlers import LossTermsHandler, TrainingCheckpoint, latest_checkpoint


def test_latest_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    names = [
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=10.pt",
        "final_iteration=99.pt",
        "model.pt",
        "x_checkpoint_epoch=3.pt",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "checkpoint_epoch=10.pt"
    assert latest_checkpoint(tmp_path, "x").name == "x_checkpoint_epoch=3.pt"
    assert latest_checkpoint(tmp_path, "other") is None


def _trainer(max_epochs, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    data = [{"image": torch.rand(2, 3), "label": torch.rand(2, 1)} for _ in range(3)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=torch.nn.MSELoss(),
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
    return trainer, net, opt, sched


def test_resume_continues_after_last_finished_epoch(tmp_path):
    trainer, net, opt, sched = _trainer(max_epochs=2)
    TrainingCheckpoint(tmp_path, {"network": net, "optimizer": opt, "lr_scheduler": sched}).attach(trainer)
    trainer.run()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_epoch=2.pt"]

    resumed, net2, opt2, sched2 = _trainer(max_epochs=4, seed=1)
    handler = TrainingCheckpoint(tmp_path, {"network": net2, "optimizer": opt2, "lr_scheduler": sched2}, resume=True)
    handler.attach(resumed)
    epochs = []
    resumed.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    weights = {}
    resumed.add_event_handler(Events.STARTED, lambda e: weights.update(w=net2.weight.detach().clone()))
    resumed.run()
    assert handler.loaded_from.name == "checkpoint_epoch=2.pt"
    assert epochs == [3, 4]
    torch.testing.assert_close(weights["w"], net.weight.detach())
    assert resumed.state.max_epochs == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=4.pt"]
    assert sched2.get_last_lr()[0] == pytest.approx(0.1 * 0.5**4)


def test_resume_without_the_best_model_file_keeps_training(tmp_path):
    """A checkpoint copied without its best model (or a deleted model.pt) must not stop training at the next
    improvement, when Ignite would remove the listed, missing file."""

    def run(max_epochs, resume):
        trainer, net, _, _ = _trainer(max_epochs)
        evaluator = Engine(lambda engine, batch: None)
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(m=trainer.state.epoch))
        saver = CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="m",
                                key_metric_filename="model.pt")  # fmt: skip
        saver.attach(evaluator)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
        TrainingCheckpoint(tmp_path, {"network": net}, resume=resume, key_metric_saver=saver).attach(trainer)
        trainer.run()
        return trainer

    run(2, resume=False)
    (tmp_path / "model.pt").unlink()
    assert run(3, resume=True).state.epoch == 3
    assert (tmp_path / "model.pt").is_file()


def test_resume_disabled_or_empty_starts_fresh(tmp_path):
    trainer, net, opt, _ = _trainer(max_epochs=1)
    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    handler = TrainingCheckpoint(tmp_path, {"network": net}, resume=True, save=False)
    handler.attach(trainer)
    trainer.run()
    assert epochs == [1] and handler.loaded_from is None and not list(tmp_path.iterdir())


def test_checkpoint_errors():
    with pytest.raises(ValueError, match="'trainer'"):
        TrainingCheckpoint(".", {"trainer": object()})
    with pytest.raises(ValueError, match="save_dict"):
        TrainingCheckpoint(".", {})


class _Terms:
    def __init__(self):
        self.last_terms = {}


def test_loss_terms_epoch_means():
    loss = _Terms()
    values = iter([1.0, 3.0, 5.0, 7.0])

    def step(engine, batch):
        v = next(values)
        loss.last_terms = {"similarity": torch.tensor(v), "prior": torch.tensor(-v)}

    engine = Engine(step)
    LossTermsHandler(loss, prefix="train_").attach(engine)
    seen = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(dict(e.state.metrics)))
    engine.run([0, 1], max_epochs=2)
    assert seen == [
        {"train_similarity": 2.0, "train_prior": -2.0},
        {"train_similarity": 6.0, "train_prior": -6.0},
    ]
