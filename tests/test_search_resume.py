"""A trial whose worker dies continues from its last checkpoint. (A driver stopped or killed, and
resumed: test_search_faults.py.)"""
import json

import psutil
from optuna.trial import TrialState

from conftest import REPO, process_tree, read_trials, run_study

TINY = str(REPO / "tests" / "studies" / "tiny.toml")


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
    db = results / "tiny" / "optuna.db"
    killed = []

    def kill_after_first_epoch(proc, out):
        if killed:
            return
        running = [t for t in read_trials(db, "tiny") if t.state == TrialState.RUNNING and t.intermediate_values]
        worker = worker_running_a_trial(proc)
        if running and worker is not None:
            worker.kill()
            killed.append(running[0].number)

    run = run_study(["--study", TINY, "--results-dir", str(results), "--trials", "1", "--no-final"],
                    watch=kill_after_first_epoch, poll=0.05)
    assert killed and run.returncode == 0, run.stderr[-2000:]
    assert "crashed; retrying from its last checkpoint" in run.stdout
    (trial,) = read_trials(db, "tiny")
    assert trial.state == TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    # Tune's own record of the trial: epochs continue after the crash instead of starting over. Tune logs an
    # epoch's result before it registers that epoch's checkpoint: a kill between the two has the trial run
    # that one epoch again, from the checkpoint before it (none before epoch 1), to the same figures.
    (result_file,) = (results / "tiny" / "tune").glob("*/result.json")
    records = [json.loads(line) for line in result_file.read_text().splitlines()]
    epochs = [r["epoch"] for r in records]
    assert epochs == sorted(epochs) and sorted(set(epochs)) == [1, 2, 3], epochs
    repeated = [e for e in set(epochs) if epochs.count(e) > 1]
    assert len(repeated) <= 1 and all(epochs.count(e) == 2 for e in repeated), epochs
    for e in repeated:
        twice = [(r["train_loss"], r["eval_acc"]) for r in records if r["epoch"] == e]
        assert twice[0] == twice[1], twice
