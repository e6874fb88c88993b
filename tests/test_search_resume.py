"""Stopping, crashing and resuming studies: nothing lost, nothing run twice."""
import json
import signal
import subprocess
import sys

import psutil
from optuna.trial import TrialState

from conftest import REPO, process_tree, read_trials, run_study


def finished_trials(db):
    return [t for t in read_trials(db) if t.state.is_finished()]


def test_a_study_stopped_by_sigterm_resumes_with_no_lost_or_repeated_trial(tmp_path):
    results = tmp_path / "results"
    db = results / "smoke" / "optuna.db"
    args = ["--study", "smoke", "--results-dir", str(results), "--trials", "5", "--no-final"]
    sent = []

    def stop_midway(proc, out):
        trials = read_trials(db)
        ended = sum(t.state.is_finished() for t in trials)
        # Best: a trial has ended and another is between epochs. ASHA always lets the first trial at a
        # rung go on, so that moment comes; should the poll miss it, stop once three have ended.
        midway = any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials)
        if not sent and ((ended >= 1 and midway) or ended >= 3):
            proc.send_signal(signal.SIGTERM)
            sent.append(True)

    first = run_study(args, watch=stop_midway)
    assert sent and first.returncode == 130, first.stderr[-2000:]
    assert "--resume" in first.stderr
    trials = read_trials(db)
    done_before = {t.number for t in trials if t.state.is_finished()}
    midway = {t.number for t in trials if t.state == TrialState.RUNNING and t.intermediate_values}
    assert 1 <= len(done_before) < 5
    # Tune keeps a checkpoint for each trial stopped between epochs (to continue it), none for an ended one.
    checkpoints = {t.number: checkpoints_of(results / "smoke", t.user_attrs["ray_trial_id"])
                   for t in trials if t.intermediate_values}
    assert all(checkpoints[n] == [] for n in done_before), checkpoints
    assert all(checkpoints[n] for n in midway), checkpoints

    again = run_study(["--study", "smoke", "--results-dir", str(results), "--no-final"])
    assert again.returncode == 2 and "--resume" in again.stderr and len(again.stderr.strip().splitlines()) == 1

    second = run_study(args[:-3] + ["--no-final", "--resume"])
    assert second.returncode == 0, second.stderr[-2000:]
    trials = read_trials(db)
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({t.user_attrs["ray_trial_id"] for t in trials}) == 5
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs"] + 1))
    # Trials finished before the stop were not started again; those stopped midway went on from their
    # checkpoints: Tune's record of each trial has every epoch in order, never starting over. Tune logs an
    # epoch's result before it registers that epoch's checkpoint, so a stop between the two has a midway
    # trial run that one epoch again, from the checkpoint before it and with its random state: to the same
    # figures.
    restarted = {n for n in range(5) if f"trial {n} started" in second.stdout}
    assert not restarted & done_before
    for t in trials:
        records = tune_records(results / "smoke", t.user_attrs["ray_trial_id"])
        epochs = [r["epoch"] for r in records]
        assert sorted(set(epochs)) == list(range(1, t.user_attrs["epochs"] + 1)) and epochs == sorted(epochs), epochs
        repeated = [e for e in set(epochs) if epochs.count(e) > 1]
        assert not repeated or (t.number in midway and len(repeated) == 1 and epochs.count(repeated[0]) == 2), epochs
        for e in repeated:
            twice = [(r["train_loss"], r["eval_acc"]) for r in records if r["epoch"] == e]
            assert twice[0] == twice[1], twice
    assert len((results / "smoke" / "trials.csv").read_text().strip().splitlines()) == 1 + 5

    # A search that ended with --no-final resumes into its final run alone.
    third = run_study(args[:-3] + ["--resume"])
    assert third.returncode == 0, third.stderr[-2000:]
    assert " started:" not in third.stdout and read_trials(db) == trials
    summary = json.loads((results / "smoke" / "final" / "summary.json").read_text())
    best = json.loads((results / "smoke" / "best.json").read_text())
    assert summary["status"] == "completed"
    assert {k: summary["config"][k] for k in best["params"]} == best["params"]
    assert not list((results / "smoke").rglob("checkpoint_*"))  # nothing that will ever be resumed is kept


def tune_records(study_root, ray_trial_id):
    (trial_dir,) = study_root.glob(f"tune/*_{ray_trial_id}_*")
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


def checkpoints_of(study_root, ray_trial_id):
    return sorted(p.name for p in study_root.glob(f"tune/*_{ray_trial_id}_*/checkpoint_*"))


def worker_running_a_trial(proc):
    for p in process_tree(proc.pid):
        try:
            if "ImplicitFunc" in " ".join(p.cmdline()) or p.name().startswith("ray::ImplicitFunc"):
                return p
        except psutil.NoSuchProcess:
            continue
    return None


def test_a_trial_whose_worker_is_killed_continues_from_its_last_checkpoint(tmp_path):
    results = tmp_path / "results"
    db = results / "smoke" / "optuna.db"
    killed = []

    def kill_after_first_epoch(proc, out):
        if killed:
            return
        running = [t for t in read_trials(db) if t.state == TrialState.RUNNING and t.intermediate_values]
        worker = worker_running_a_trial(proc)
        if running and worker is not None:
            worker.kill()
            killed.append(running[0].number)

    run = run_study(["--study", "smoke", "--results-dir", str(results), "--trials", "1", "--no-final"],
                    watch=kill_after_first_epoch)
    assert killed and run.returncode == 0, run.stderr[-2000:]
    assert "crashed; retrying from its last checkpoint" in run.stdout
    (trial,) = read_trials(db)
    assert trial.state == TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4]
    # Tune's own record of the trial: epochs continue after the crash instead of starting over.
    (result_file,) = (results / "smoke" / "tune").glob("*/result.json")
    epochs = [json.loads(line)["epoch"] for line in result_file.read_text().splitlines()]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 4


def test_asking_for_more_gpus_than_ray_sees_is_one_clear_line(tmp_path):
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "search.run", "--study", "smoke", "--results-dir", str(results),
                          "--gpus", "3"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: --gpus 3: Ray sees 0 GPUs in this machine; ask for at most 0 (0 runs on CPU)"]
    assert not (results / "smoke" / "optuna.db").exists()
