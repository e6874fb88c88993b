"""The compiled training step: the same maths as the eager one, static shapes, exact resume.

On a CPU torch.compile's default backend (inductor) takes many minutes to build ResNet34, so these
tests compile with backends that share everything up to code generation: "aot_eager" (Dynamo's
graph capture and AOT autograd's forward and backward graphs, run by the eager kernels) and "eager"
(Dynamo's capture alone). What they check (graphs, guards and recompilation, the
schedule outside the graph) is decided before code generation.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch._dynamo.utils

from recipe import checkpoint
from recipe.data import Arrays, synthetic
from recipe.engine import DeviceData, train_epoch
from recipe.model import ResNet34
from recipe.train import make_step, train

from conftest import tiny_config

CPU = torch.device("cpu")


def fresh(config, total_steps=200, backend="inductor"):
    torch.manual_seed(0)
    model = ResNet34(width=config.width, dropout=config.dropout)
    return model, make_step(model, config, CPU, total_steps, compile_backend=backend)


def test_a_compiled_step_trains_like_the_eager_step_within_float_tolerance():
    # Dropout off and one fixed batch per step: both take exactly the same steps.
    train_set, _ = synthetic()
    batches = [(torch.tensor(train_set.x[i:i + 32]).permute(0, 3, 1, 2).contiguous().float() / 255,
                torch.tensor(train_set.y[i:i + 32])) for i in range(0, 128, 32)]
    runs = {}
    for mode in ("off", "default"):
        model, step = fresh(tiny_config(dropout=0.0, compile=mode), backend="aot_eager")
        losses, lrs = [], []
        for x, y in batches:
            loss, _ = step(x, y)
            losses.append(float(loss))
            lrs.append(float(step.optimizer.param_groups[0]["lr"]))
        runs[mode] = (losses, lrs, model.state_dict())
    (eager_losses, eager_lrs, eager_state), (comp_losses, comp_lrs, comp_state) = runs["off"], runs["default"]
    assert comp_lrs == eager_lrs
    # Only the order of float operations may differ, where a backend fuses kernels (inductor); aot_eager runs
    # the eager kernels and was bit-identical over 3 sets of batches, with and without ATEN_CPU_CAPABILITY=avx2.
    assert comp_losses == pytest.approx(eager_losses, rel=1e-4)
    for name, value in eager_state.items():
        if value.is_floating_point():
            assert torch.allclose(comp_state[name], value, rtol=1e-4, atol=1e-5), name
    assert eager_losses[-1] != eager_losses[0]  # the steps did train


def graphs_compiled() -> int:
    """Graphs Dynamo has captured in this process so far."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_a_compiled_epoch_sees_every_image_and_compiles_each_batch_shape_once():
    # 100 images at batch 32: three full batches and a last one of 4, every epoch.
    train_set, _ = synthetic()
    data = DeviceData(Arrays(train_set.x[:100], train_set.y[:100]), CPU, channels_last=False)
    _, step = fresh(tiny_config(compile="default", batch_size=32), backend="eager")
    before = graphs_compiled()
    graphs = []
    for _ in range(3):
        result = train_epoch(step, data.train_batches(32, 0.5), device=CPU)
        assert result.images == 100 and not result.diverged
        graphs.append(graphs_compiled() - before)
    # Epoch 1 compiled one graph per batch shape (32 and 4); later epochs compile nothing.
    assert graphs == [2, 2, 2]


def test_an_eager_step_compiles_nothing():
    train_set, _ = synthetic()
    data = DeviceData(Arrays(train_set.x[:100], train_set.y[:100]), CPU, channels_last=False)
    _, step = fresh(tiny_config(compile="off", batch_size=32), backend="eager")
    before = graphs_compiled()
    assert train_epoch(step, data.train_batches(32, 0.5), device=CPU).images == 100
    assert graphs_compiled() == before


def test_a_compiled_run_resumes_exactly_like_an_uninterrupted_one(tmp_path):
    config = tiny_config(epochs=3, compile="default")
    train(config, tmp_path / "straight", compile_backend="eager")

    def stop_after_first_epoch(metrics, path):
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", callback=stop_after_first_epoch, compile_backend="eager")
    summary = train(config, tmp_path / "resumed", resume=True, compile_backend="eager")
    assert summary["status"] == "completed" and summary["epochs_run"] == 3

    def metrics(run):
        rows = (tmp_path / run / "metrics.csv").read_text().splitlines()
        return [",".join(row.split(",")[:6]) for row in rows]  # without the timing columns

    assert metrics("resumed") == metrics("straight")
    a = checkpoint.load(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["compile"] == "default"


def test_an_eager_run_resumes_a_compiled_one_and_back(tmp_path):
    # compile may differ on resume: it changes the speed, not the maths.
    config = tiny_config(epochs=3)
    train(config, tmp_path / "straight")

    def stop_after(epoch):
        def callback(metrics, path):
            if metrics["epoch"] == epoch:
                raise KeyboardInterrupt
        return callback

    with pytest.raises(KeyboardInterrupt):
        train(config.replace(compile="default"), tmp_path / "run", compile_backend="eager", callback=stop_after(1))
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", resume=True, callback=stop_after(2))
    summary = train(config.replace(compile="default"), tmp_path / "run", resume=True, compile_backend="eager")
    assert summary["status"] == "completed" and summary["epochs_run"] == 3

    def metrics(run):
        rows = (tmp_path / run / "metrics.csv").read_text().splitlines()[1:]
        return [[float(v) for v in row.split(",")[:6]] for row in rows]  # without the timing columns

    # Within float tolerance of the eager run straight through (see the first test of this file).
    for mixed, straight in zip(metrics("run"), metrics("straight"), strict=True):
        assert mixed == pytest.approx(straight, rel=1e-4)
    a = checkpoint.load(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    for name, value in a["model"].items():
        if value.is_floating_point():
            assert torch.allclose(b["model"][name], value, rtol=1e-4, atol=1e-5), name
