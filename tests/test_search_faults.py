"""Faults of a study's driver: killed (SIGKILL) in its search and again in its final run, a damaged
trial checkpoint found on resume, a second driver on a running study. Nothing lost, nothing run twice.

One study (tests/studies/tiny.toml) goes through all of them, as a user would meet them:
1. the driver is killed while trials are midway, and their checkpoints in Tune's experiment are then
   truncated (a full disk, a lost copy);
2. `--resume`: while it runs, a second driver (with and without --resume) is refused and
   `python -m search.report` works; it is killed in turn during the final run;
3. `--resume` ends the study.
"""
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from conftest import REPO, process_tree, read_trials, run_study, tiny_config
from recipe.config import SEARCHED
from search.tuning import mark_lost_checkpoints, settle_ended_trials

STUDY = str(REPO / "tests" / "studies" / "tiny.toml")
PLANNED = 3  # tiny.toml's trials


def saved_tune_trials(experiment: Path) -> list[tuple[dict, dict]]:
    """(trial, runtime metadata) of each trial in Tune's newest saved experiment state; [] while it is being written."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return []
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, ValueError):
        return []
    return [(json.loads(trial), json.loads(meta)) for trial, meta in data["trial_data"]]


def midway_with_checkpoint(experiment: Path) -> list[str]:
    """Tune ids of the trials Tune's saved state would resume from a checkpoint."""
    return [t["trial_id"] for t, meta in saved_tune_trials(experiment)
            if t["status"] == "RUNNING" and (meta.get("last_result") or {}).get("checkpoint_dir_name")]


def kill_tree(proc, seen: dict) -> None:
    """SIGKILL the driver alone, as the OOM killer or a lost session would; remember its process tree."""
    seen["tree"] = process_tree(proc.pid)
    proc.kill()


def clean_up(tree: list) -> None:
    """Ray's processes that outlived the killed driver: only those of its recorded tree."""
    alive = []
    for p in tree:
        try:
            if p.is_running():
                p.kill()
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=30)


@pytest.fixture(scope="module")
def killed_twice(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    root = results / "tiny"
    db = root / "optuna.db"
    args = ["--study", STUDY, "--results-dir", str(results)]
    seen: dict = {}

    def kill_midway(proc, out):
        if "tree" in seen:
            return
        trials = read_trials(db, "tiny")
        running = {t.user_attrs.get("ray_trial_id") for t in trials if t.state == TrialState.RUNNING}
        midway = [tid for tid in midway_with_checkpoint(root / "tune") if tid in running]
        if midway and any(t.state.is_finished() for t in trials):
            seen["midway"] = midway
            kill_tree(proc, seen)

    first = run_study(args, watch=kill_midway)
    clean_up(seen.get("tree", []))
    after_first = read_trials(db, "tiny")
    # Tune's experiment as the kill left it, for test_lost_checkpoints_of_unfinished_trials_are_marked.
    left = tmp_path_factory.mktemp("left") / "tune"
    shutil.copytree(root / "tune", left)
    # The checkpoints of the midway trials, truncated. The one Tune's saved state names may be gone already:
    # Tune deletes a trial's checkpoint as it registers the next, and saves its state only every few seconds.
    damaged = seen.get("midway", [])
    for trial_id in damaged:
        for ckpt in root.glob(f"tune/*_{trial_id}_*/checkpoint_*/last.pt"):
            ckpt.write_bytes(ckpt.read_bytes()[:1000])

    second_seen: dict = {}

    def refuse_then_kill_in_final(proc, out):
        lock = root / "driver.lock"
        if "others" not in second_seen and lock.exists() and lock.read_text().strip() == str(proc.pid):
            # Started while this driver holds the study, which it does for many seconds more (Ray starts,
            # trials run); not waited for here, so that the kill in the final run below is not missed.
            commands = {
                "resume": [sys.executable, "-m", "search.run", *args, "--resume"],
                "plain": [sys.executable, "-m", "search.run", *args],
                "report": [sys.executable, "-m", "search.report", "--study", "tiny", "--results-dir", str(results)],
            }
            second_seen["others"] = {k: subprocess.Popen(c, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                         text=True, stdin=subprocess.DEVNULL) for k, c in commands.items()}
            second_seen["pid"] = proc.pid
        if "tree" not in second_seen and "final epoch 1/" in out:
            kill_tree(proc, second_seen)

    second = run_study(args + ["--resume"], watch=refuse_then_kill_in_final)
    clean_up(second_seen.get("tree", []))
    others = {k: (*p.communicate(timeout=300), p.returncode) for k, p in second_seen.get("others", {}).items()}
    after_second = read_trials(db, "tiny")
    third = run_study(args + ["--resume"])
    return dict(root=root, db=db, first=first, second=second, third=third, damaged=damaged, left=left,
                after_first=after_first, after_second=after_second, others=others, pid=second_seen.get("pid"))


def test_a_driver_killed_in_its_search_resumes_with_every_planned_trial_run_once(killed_twice):
    k = killed_twice
    assert k["first"].returncode == -9, k["first"].stderr[-2000:]
    assert any(t.state == TrialState.RUNNING for t in k["after_first"])  # killed with trials midway
    assert k["third"].returncode == 0, k["third"].stderr[-2000:]
    trials = read_trials(k["db"], "tiny")
    assert [t.number for t in trials] == list(range(PLANNED))  # none lost, none added in place of a lost one
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state for t in trials]
    assert len({t.user_attrs["ray_trial_id"] for t in trials}) == PLANNED
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs"] + 1))
    # Trials that had ended before the kill were not run again.
    ended_before = {t.number for t in k["after_first"] if t.state.is_finished()}
    assert not {n for n in range(PLANNED) if f"trial {n} started" in k["second"].stdout} & ended_before
    assert len((k["root"] / "trials.csv").read_text().strip().splitlines()) == 1 + PLANNED


def test_a_damaged_trial_checkpoint_restarts_that_trial_from_epoch_0_once(killed_twice):
    k = killed_twice
    assert k["damaged"], "the driver was not killed with a trial midway"
    trials = {t.user_attrs["ray_trial_id"]: t for t in read_trials(k["db"], "tiny")}
    for trial_id in k["damaged"]:
        t = trials[trial_id]
        (line,) = [ln for ln in k["second"].stdout.splitlines() if f"trial {t.number}: its checkpoint" in ln]
        # Truncated, or deleted by Tune after the state it resumed from was saved (both are this fault).
        assert f"_{trial_id}_" in line and ("could not be used (not a readable checkpoint" in line
                                            or "could not be used (not there)" in line), line
        assert "restarted from epoch 0" in t.user_attrs["restarted"]
        (trial_dir,) = k["root"].glob(f"tune/*_{trial_id}_*")
        epochs = [json.loads(line)["epoch"] for line in (trial_dir / "result.json").read_text().splitlines()]
        restarts = [i for i in range(1, len(epochs)) if epochs[i] <= epochs[i - 1]]
        assert len(restarts) == 1 and epochs[restarts[0]] == 1 and epochs[-1] == t.user_attrs["epochs"], epochs
    assert "crashed; retrying" not in k["second"].stdout  # the damaged file was not tried again and again


def test_lost_checkpoints_of_unfinished_trials_are_marked_so_their_trials_restart(killed_twice):
    left = killed_twice["left"]  # Tune's experiment as the first kill left it
    unfinished = [t["trial_id"] for t, meta in saved_tune_trials(left)
                  if t["status"] not in ("TERMINATED", "ERROR") and (meta.get("last_result") or {}).get("checkpoint_dir_name")]
    assert unfinished
    # Every checkpoint of those trials deleted, as Tune does to each trial's older ones between two saves of its state.
    for trial_id in unfinished:
        for checkpoint in left.glob(f"*_{trial_id}_*/checkpoint_*"):
            shutil.rmtree(checkpoint)
    made = [Path(p) for p in mark_lost_checkpoints(str(left))]
    # An empty directory where Tune will look for each one's checkpoint; none for the trials that ended.
    assert sorted(p.parent.name.split("_")[2] for p in made) == sorted(unfinished), made
    assert all(p.name.startswith("checkpoint_") and p.is_dir() and not any(p.iterdir()) for p in made)
    assert mark_lost_checkpoints(str(left)) == []


def test_a_driver_killed_in_its_final_run_resumes_it_to_a_whole_final_run(killed_twice):
    k = killed_twice
    assert k["second"].returncode == -9 and "final run completed" not in k["second"].stdout, k["second"].stdout[-2000:]
    assert k["third"].returncode == 0, k["third"].stderr[-2000:]
    assert " started:" not in k["third"].stdout  # the search was over: only the final run went on
    assert read_trials(k["db"], "tiny") == k["after_second"]
    final = k["root"] / "final"
    summary = json.loads((final / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    rows = (final / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2]
    assert "final run completed" in k["third"].stdout


def test_a_second_driver_on_a_running_study_is_refused_with_one_line_and_writes_nothing(killed_twice):
    k = killed_twice
    assert k["others"], "the second driver was never seen holding the study"
    for name in ("resume", "plain"):
        out, err, code = k["others"][name]
        assert code == 2 and out == "", (name, out, err)
        (line,) = err.strip().splitlines()
        assert line.startswith("error: ") and "'tiny'" in line and f"another driver (PID {k['pid']})" in line, line
    out, err, code = k["others"]["report"]
    assert code == 0, err[-2000:]  # reading a running study is fine


def test_settling_marks_trials_optuna_saw_end_as_terminated_and_sets_aside_a_cut_short_state(tmp_path):
    experiment = tmp_path / "tune"
    experiment.mkdir()
    state = {"trial_data": [[json.dumps({"trial_id": tid, "status": "RUNNING"}), "{}"] for tid in ("a", "b")],
             "runner_data": {}, "stats": {}}
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s")
    for tid, ended in (("a", True), ("b", False)):
        trial = study.ask()
        trial.set_user_attr("ray_trial_id", tid)
        if ended:
            study.tell(trial, state=TrialState.PRUNED)
    # A later session's state, cut short by the kill: set aside, with that session's other files.
    (experiment / "experiment_state-2026-01-02_00-00-00.json").write_text(json.dumps(state)[:50])
    (experiment / "searcher-state-2026-01-02_00-00-00.pkl").write_bytes(b"...")
    assert settle_ended_trials(str(experiment), study) == ["a"]
    assert [(t["trial_id"], t["status"]) for t, _ in saved_tune_trials(experiment)] == [("a", "TERMINATED"),
                                                                                          ("b", "RUNNING")]
    assert sorted(p.name for p in experiment.glob("*.damaged")) == [
        "experiment_state-2026-01-02_00-00-00.json.damaged", "searcher-state-2026-01-02_00-00-00.pkl.damaged"]


class FakeCheckpoint:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    @contextlib.contextmanager
    def as_directory(self):
        yield self.path


@pytest.mark.parametrize("content, why", [(b"PK\x03\x04 cut short", "not a readable checkpoint"),
                                          (None, "not there)")], ids=["truncated", "lost"])
def test_a_trial_whose_checkpoint_is_truncated_or_lost_restarts_from_epoch_0_and_says_why(tmp_path, monkeypatch, capsys,
                                                                                          content, why):
    from search import trainable

    tune_copy = tmp_path / "tune" / "checkpoint_000001"
    tune_copy.mkdir(parents=True)  # a lost one: the empty directory tuning.mark_lost_checkpoints leaves
    if content is not None:
        (tune_copy / "last.pt").write_bytes(content)
    reports = []
    monkeypatch.setattr(trainable.tune, "get_checkpoint", lambda: FakeCheckpoint(tune_copy))
    monkeypatch.setattr(trainable.tune, "report", lambda metrics, checkpoint=None: reports.append(metrics))
    monkeypatch.chdir(tmp_path)
    config = tiny_config(epochs=2).to_dict()
    params = {k: config.pop(k) for k in SEARCHED}
    trainable.run_recipe(params, base=config, threads=1)
    assert [r["epoch"] for r in reports] == [1, 2]
    said = reports[0][trainable.RESTARTED]
    assert said.startswith(f"its checkpoint {tune_copy}/last.pt could not be used ({why}")
    assert said.endswith("); restarted from epoch 0") and trainable.RESTARTED not in reports[1]
    assert said in capsys.readouterr().err


def test_a_study_lock_is_held_for_its_drivers_life_and_freed_when_it_is_killed(tmp_path):
    from search import lock

    root = tmp_path / "results" / "s"
    lock.check_free(root, "s")  # no study yet: free, and nothing written
    assert not (tmp_path / "results").exists()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from search import lock; "
                               f"lock.take(__import__('pathlib').Path({str(root)!r}), 's'); print('held', flush=True); "
                               "time.sleep(600)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for attempt in (lock.check_free, lock.take):
            with pytest.raises(lock.StudyBusy, match=rf"study 's' is being run by another driver \(PID {holder.pid}\)"):
                attempt(root, "s")
    finally:
        holder.kill()  # SIGKILL: no handler, no atexit; the kernel lets go of the lock
        holder.wait()
    lock.check_free(root, "s")
    os.close(lock.take(root, "s"))
    assert (root / "driver.lock").read_text().strip() == str(os.getpid())
