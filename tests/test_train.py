import csv
import json
import os
import stat

import pytest
import torch

from recipe import checkpoint
from recipe.checkpoint import CheckpointError
from recipe.config import RecipeConfig, RecipeError
from recipe.train import RunDirError, amp_dtype, train

from conftest import tiny_config


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_short_run_on_synthetic_data_clearly_learns(tmp_path):
    # Without erasing and dropout, at a moderate lr: lr 0.4 with the recipe's regularisation sat on a knife
    # edge (0.024-0.392 over seeds 0-4; below chance on AVX-512 machines). This config's final accuracy over
    # seeds 0-4, one thread: 0.168-0.340 (ATEN_CPU_CAPABILITY=default), 0.086-0.218 and 0.144-0.384 (avx2, two
    # machines), 0.086-0.238 (AVX-512); with channels_last 0.104-0.322 over those three kernel sets. The threshold
    # is under half the lowest of those, and four times chance (0.01).
    config = tiny_config(width=8, subset=1500, eval_subset=500, epochs=3, lr=0.1, erasing_p=0.0, dropout=0.0)
    summary = train(config, tmp_path)
    assert summary["status"] == "completed"
    assert summary["final_eval_acc"] > 0.04
    rows = read_metrics(tmp_path)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_a_run_directory_holds_config_metrics_summary_curves_and_checkpoints(tmp_path):
    config = tiny_config(epochs=2)
    calls = []
    summary = train(config, tmp_path, callback=lambda metrics, path: calls.append((metrics, path)))
    assert json.loads((tmp_path / "config.json").read_text()) == config.to_dict()
    rows = read_metrics(tmp_path)
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_acc", "eval_loss", "eval_acc", "epoch_time_s",
                             "images_per_s"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0 <= float(r[k]) <= 1 for r in rows for k in ("train_acc", "eval_acc"))
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["status"] == "completed" and saved["epochs_run"] == 2 and saved["eval_set"] == "test"
    assert saved["final_eval_acc"] == pytest.approx(float(rows[-1]["eval_acc"]))
    assert saved["best_eval_acc"] == max(float(r["eval_acc"]) for r in rows)
    assert saved["torch_version"] == torch.__version__ and saved["device"] == "cpu" and saved["wall_time_s"] > 0
    assert summary == saved
    assert "plotly" in (tmp_path / "curves.html").read_text()[:100_000].lower()
    best = checkpoint.load(tmp_path / "checkpoints" / "best.pt")
    assert best["eval_acc"] == saved["best_eval_acc"] and best["epoch"] == saved["best_epoch"]
    # The callback saw every epoch, after its checkpoint was written.
    assert [m["epoch"] for m, _ in calls] == [1, 2]
    assert [m["status"] for m, _ in calls] == ["running", "completed"]
    assert all(p == tmp_path / "checkpoints" / "last.pt" for _, p in calls)


def test_evaluation_loss_is_plain_cross_entropy(tmp_path):
    # The same weights evaluate to the same loss whatever the training smoothing: the first
    # epoch differs only in the loss's gradient, so compare a run's eval loss to a recomputation.
    config = tiny_config(epochs=1, label_smoothing=0.5)
    train(config, tmp_path)
    from recipe.data import load_splits
    from recipe.engine import DeviceData
    from recipe.model import ResNet34

    model = ResNet34(width=config.width, dropout=config.dropout)
    model.load_state_dict(checkpoint.load(tmp_path / "checkpoints" / "last.pt")["model"])
    data = DeviceData(load_splits(config).eval, torch.device("cpu"), False)
    logits = torch.cat([model.eval()(x) for x, _ in data.eval_batches(100)])
    plain = torch.nn.functional.cross_entropy(logits, data.y).item()
    assert float(read_metrics(tmp_path)[0]["eval_loss"]) == pytest.approx(plain, rel=1e-5)


class Interrupt(Exception):
    pass


def test_an_interrupted_and_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path):
    config = tiny_config(epochs=3)
    train(config, tmp_path / "straight")

    def stop_after_first_epoch(metrics, path):
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", callback=stop_after_first_epoch)
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["status"] == "interrupted"
    summary = train(config, tmp_path / "resumed", resume=True)
    assert summary["status"] == "completed" and summary["epochs_run"] == 3

    timing = ("epoch_time_s", "images_per_s")
    straight = [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(tmp_path / "straight")]
    resumed = [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(tmp_path / "resumed")]
    assert resumed == straight
    a = checkpoint.load(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_classic_pipeline_resumes_exactly_too(tmp_path):
    config = tiny_config(epochs=2, pipeline="classic", subset=128, eval_subset=100, workers=2)
    train(config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", callback=lambda m, p: (_ for _ in ()).throw(KeyboardInterrupt))
    train(config, tmp_path / "resumed", resume=True)
    a = checkpoint.load(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_non_finite_loss_stops_the_run_as_diverged(tmp_path):
    config = tiny_config(epochs=3, lr=1e6, grad_clip=0.0)
    calls = []
    summary = train(config, tmp_path, callback=lambda m, p: calls.append((m["status"], p)))
    assert summary["status"] == "diverged"
    assert summary["epochs_run"] == 1
    assert calls == [("diverged", None)]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"
    assert read_metrics(tmp_path)[-1]["train_loss"] == "nan"


def test_resuming_with_a_different_config_is_an_error(tmp_path):
    train(tiny_config(epochs=1), tmp_path)
    with pytest.raises(CheckpointError, match="lr=0.1, not 0.2"):
        train(tiny_config(epochs=1, lr=0.2), tmp_path, resume=True)

def test_a_run_saved_before_split_seed_existed_resumes_and_a_different_split_does_not(tmp_path):
    config = tiny_config(epochs=2, seed=3)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "old", callback=lambda m, p: (_ for _ in ()).throw(KeyboardInterrupt))
    last = tmp_path / "old" / "checkpoints" / "last.pt"
    state = checkpoint.load(last)
    del state["config"]["split_seed"]  # as a run before split_seed saved it: its split drawn with its seed, 3
    checkpoint.save(last, {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(CheckpointError, match="split_seed=3, not 4"):
        train(config.replace(split_seed=4), tmp_path / "old", resume=True)
    # The same split, said either way (as a study now says it: split_seed = its seed).
    assert train(config.replace(split_seed=3), tmp_path / "old", resume=True)["status"] == "completed"



@pytest.mark.parametrize("damage", ["truncate", "foreign"])
def test_a_damaged_or_foreign_checkpoint_is_a_clear_error(tmp_path, damage):
    train(tiny_config(epochs=1), tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[:1000])
    else:
        torch.save({"weights": torch.zeros(3)}, last)
    with pytest.raises(CheckpointError, match="last.pt: not a"):
        train(tiny_config(epochs=1), tmp_path, resume=True)


def test_a_directory_that_holds_a_run_is_not_overwritten(tmp_path):
    train(tiny_config(epochs=1), tmp_path)
    before = (tmp_path / "metrics.csv").read_text()
    with pytest.raises(RunDirError, match="--resume"):
        train(tiny_config(epochs=1), tmp_path)
    assert (tmp_path / "metrics.csv").read_text() == before


def test_validation_split_is_the_evaluation_set_when_asked(tmp_path):
    summary = train(tiny_config(epochs=1, val_size=300), tmp_path)
    assert summary["eval_set"] == "val" and summary["eval_images"] == 300


def test_amp_auto_is_bf16_on_gpus_that_do_it_natively_fp16_on_older_ones_and_off_on_a_cpu(monkeypatch):
    cuda = torch.device("cuda")
    # Pre-Ampere GPUs have bf16 only by emulation.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert amp_dtype(RecipeConfig(), cuda) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert amp_dtype(RecipeConfig(), cuda) == torch.bfloat16
    assert amp_dtype(RecipeConfig(), torch.device("cpu")) is None
    assert amp_dtype(RecipeConfig(amp="bf16"), torch.device("cpu")) == torch.bfloat16
    assert amp_dtype(RecipeConfig(amp="off"), cuda) is None


def test_a_schedule_that_would_warm_up_over_exactly_one_step_is_refused_before_anything_is_written(tmp_path):
    # 160 images at batch 32 for 2 epochs: 10 steps, a 10% warm-up of exactly 1 step, where torch's OneCycleLR
    # divides by zero.
    with pytest.raises(RecipeError, match="^epochs: OneCycle cannot warm up over exactly 1 step"):
        train(tiny_config(subset=160, batch_size=32, epochs=2), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_a_runs_files_get_the_mode_the_umask_gives_a_new_file(tmp_path, umask, mode):
    # Written through a temporary file and renamed, yet readable as any file the user writes: a study's
    # report on a shared disk must be readable by colleagues.
    old = os.umask(umask)
    try:
        train(tiny_config(epochs=1), tmp_path / "run")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    names = {p.relative_to(tmp_path / "run").as_posix() for p in files}
    assert {"config.json", "metrics.csv", "summary.json", "curves.html", "checkpoints/last.pt",
            "checkpoints/best.pt"} <= names
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(mode) for p in files}
