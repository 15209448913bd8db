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

import logging

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer

from svreg_monai.handlers import SkipNonFiniteGradients


class _PoisonedLoss(torch.nn.Module):
    """MSE whose gradient is made NaN/inf at chosen iterations (1-based), through a hook on the prediction."""

    def __init__(self, bad_iterations, value=float("nan")):
        super().__init__()
        self.bad = set(bad_iterations)
        self.value = value
        self.calls = 0

    def forward(self, pred, target):
        self.calls += 1
        if self.calls in self.bad:
            pred.register_hook(lambda g: torch.full_like(g, self.value))
        return torch.nn.functional.mse_loss(pred, target)


def _run(
    bad_iterations, iterations=4, value=float("nan"), optimizer=torch.optim.Adam, handler=True, amp=False, **kwargs
):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = optimizer(net.parameters(), lr=0.1)
    data = [{"image": torch.rand(2, 3), "label": torch.rand(2, 1)} for _ in range(iterations)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=_PoisonedLoss(bad_iterations, value),
        amp=amp,
    )
    handler = SkipNonFiniteGradients(**kwargs) if handler else None
    if handler is not None:
        handler.attach(trainer)
    snapshots = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: snapshots.append([p.detach().clone() for p in net.parameters()])
    )
    trainer.run()
    return trainer, handler, net, opt, snapshots


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_bad_step_is_skipped_and_counted(value, caplog):
    with caplog.at_level(logging.WARNING, logger="svreg_monai"):
        trainer, handler, net, opt, snaps = _run({2}, value=value)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    # iteration 2 changed nothing: weights equal those after iteration 1
    for before, after in zip(snaps[0], snaps[1]):
        torch.testing.assert_close(after, before, rtol=0, atol=0)
    # the good iterations around it did change the weights
    assert not torch.equal(snaps[2][0], snaps[1][0])
    assert handler.skipped == 1 and trainer.state.metrics["skipped_steps"] == 1
    assert "iteration 2: non-finite gradients in weight, bias; optimiser step skipped" in caplog.text


def test_skipped_step_leaves_adam_state_untouched():
    # Adam's step count advances only on applied steps: 4 iterations, 1 skipped -> 3
    _, _, net, opt, _ = _run({3})
    assert all(int(opt.state[p]["step"]) == 3 for p in net.parameters())


def test_finite_training_is_unchanged():
    _, handler, net, _, _ = _run(set())
    _, _, plain, _, _ = _run(set(), handler=False)
    assert handler.skipped == 0
    for p, q in zip(net.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # the same steps as without the handler
    torch.manual_seed(0)
    assert not torch.equal(torch.nn.Linear(3, 1).weight, net.weight)  # and it did train


def test_amp_without_cuda_is_still_guarded():
    # MONAI's amp=True has no active gradient scaler on CPU, so the handler does the skipping
    trainer, handler, net, _, _ = _run({2}, amp=True)
    assert handler.skipped == 1 and all(torch.isfinite(p).all() for p in net.parameters())


def test_consecutive_skips_raise():
    with pytest.raises(RuntimeError, match="3 consecutive iterations had non-finite gradients"):
        _run({1, 2, 3}, max_consecutive=3)
    _, handler, _, _, _ = _run({1, 2, 4}, max_consecutive=3)  # not consecutive
    assert handler.skipped == 3


def test_state_dict_round_trip_and_errors():
    handler = SkipNonFiniteGradients()
    handler.load_state_dict({"skipped": 5})
    assert handler.state_dict() == {"skipped": 5}
    with pytest.raises(ValueError, match="max_consecutive must be .* got 0"):
        SkipNonFiniteGradients(max_consecutive=0)
    # an engine without MONAI's iteration events
    with pytest.raises(ValueError, match="BACKWARD_COMPLETED is not a valid event"):
        SkipNonFiniteGradients().attach(Engine(lambda e, b: None))
