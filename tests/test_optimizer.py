"""SGD as the recipe builds it for a device: fused kernels on CUDA, but not where they train wrongly.

No GPU here: a device that only says it is CUDA (the optimizer's choice reads nothing else), and torch's
CPU fused SGD kernel, which takes the same Python path through GradScaler and SGD as the CUDA one.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from recipe import augment
from recipe.data import synthetic
from recipe.engine import TrainStep
from recipe.model import ResNet34
from recipe.train import make_optimizer, make_scheduler, make_step

from conftest import tiny_config

CPU = torch.device("cpu")
CUDA = SimpleNamespace(type="cuda")


def test_sgd_is_fused_on_cuda_under_bf16_and_without_amp_but_not_under_fp16_nor_on_a_cpu():
    model = ResNet34(width=4)
    fused = lambda amp, device: make_optimizer(model, tiny_config(amp=amp), device).param_groups[0]["fused"]  # noqa: E731
    assert fused("bf16", CUDA) is True and fused("off", CUDA) is True
    assert not fused("fp16", CUDA) and not fused("off", CPU)


# A skipped step still advances the schedule, as everywhere with a GradScaler; torch warns of it.
@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
def test_an_fp16_run_whose_scaler_skips_its_first_steps_trains_as_with_torchs_default_sgd():
    # A scale far too large overflows the first steps, which the GradScaler skips (torch says the first few
    # often are). Fused SGD would take the first as a step and keep momentum buffers it never wrote.
    train, _ = synthetic()
    x, y = augment.train_batch(torch.tensor(train.x[:16]), 0.5), torch.tensor(train.y[:16]).long()
    config = tiny_config(amp="fp16")
    weights = {}
    for device in (CPU, CUDA):
        torch.manual_seed(0)
        model = ResNet34(width=4, dropout=0.2)
        optimizer = make_optimizer(model, config, device)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 17)  # overflows step 1 (from 2**16 a step is taken)
        step = TrainStep(model, optimizer, make_scheduler(optimizer, config, 100), nn.CrossEntropyLoss(), device=CPU,
                         amp_dtype=torch.float16, scaler=scaler, grad_clip=1.0)
        before = model.fc.weight.detach().clone()
        step(x, y)
        assert scaler.get_scale() < 2.0 ** 17  # the first step overflowed and was skipped
        for _ in range(3):  # an fp16 step on a CPU takes about a second
            step(x, y)
        weights[device.type] = model.fc.weight.detach().clone()
        assert not torch.equal(weights[device.type], before)  # later steps were taken
    assert torch.isfinite(weights["cuda"]).all() and float(weights["cuda"].abs().max()) < 10
    assert torch.equal(weights["cuda"], weights["cpu"])


def test_a_run_resumed_on_another_device_steps_with_that_devices_kernels():
    config = tiny_config(amp="bf16")
    model = ResNet34(width=4)
    for saved_on, resumed_on, fused in ((CPU, CUDA, True), (CUDA, CPU, None)):
        optimizer = make_optimizer(model, config, saved_on)
        state = {"optimizer": optimizer.state_dict(), "scheduler": make_scheduler(optimizer, config, 100).state_dict()}
        step = make_step(model, config, resumed_on, 100, state=state)
        assert [g["fused"] for g in step.optimizer.param_groups] == [fused], (saved_on, resumed_on)
