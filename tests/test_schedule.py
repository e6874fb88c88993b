import numpy as np
import pytest
import torch

from recipe.config import RecipeConfig
from recipe.train import make_optimizer, make_scheduler, steps_per_epoch


def trace(config: RecipeConfig, steps: int):
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(model, config)
    sched = make_scheduler(opt, config, steps)
    lrs, moms = [], []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    return np.array(lrs), np.array(moms)


def test_onecycle_starts_at_a_tenth_peaks_at_ten_percent_and_ends_at_a_hundredth():
    config = RecipeConfig(lr=0.1)
    total = 250 * steps_per_epoch(config, 50_000)
    lrs, _ = trace(config, total)
    assert lrs[0] == pytest.approx(0.01)
    peak = int(np.argmax(lrs))
    assert abs(peak - 0.1 * total) <= 1
    assert lrs[peak] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.001, rel=1e-3)
    assert np.all(np.diff(lrs[: peak + 1]) > 0) and np.all(np.diff(lrs[peak:]) < 0)


def test_peak_follows_the_configured_lr():
    lrs, _ = trace(RecipeConfig(lr=0.4), 1000)
    assert (lrs[0], lrs.max(), lrs[-1]) == pytest.approx((0.04, 0.4, 0.004), rel=1e-2)


def test_momentum_stays_at_0_9_unless_cycling_is_asked_for():
    _, moms = trace(RecipeConfig(), 500)
    assert np.all(moms == 0.9)
    _, cycled = trace(RecipeConfig(cycle_momentum=True), 500)
    assert cycled.min() < 0.9 < cycled.max()


def test_steps_per_epoch_counts_the_last_partial_batch():
    assert steps_per_epoch(RecipeConfig(batch_size=128), 50_000) == 391
