"""A study's driver stopped and killed, a damaged trial checkpoint found on resume, a second driver on a
running study: nothing lost, nothing run twice.

One study (tests/studies/tiny.toml, 5 trials, one at a time) goes through all of them, as a user would meet them:
0. SIGTERM while Ray starts, before anything of the study is written: exit 130, the same command to run again
   (which step 1 is), and none of Ray's processes outlive the driver;
1. SIGTERM (Ctrl-C, a scheduler's stop) while a trial is midway: exit 130 with the --resume command; a
   plain rerun is refused;
2. `--resume --no-final`: the driver is SIGKILLed (the OOM killer, a lost session) while trials are
   midway, and their checkpoints in Tune's experiment are then truncated (a full disk, a lost copy);
3. `--resume --no-final`: while it runs, a second driver (with and without --resume) is refused and
   `python -m search.report` works; the search ends, and the driver is SIGKILLed in the re-validation of
   the top trials (--revalidate-top 2) as the first re-run ends, before the second has started;
4. `--resume`: SIGTERM as the second re-run starts, all of re-validation's runs left running: exit 130 and the
   --resume command; `--resume`: re-validation goes on with the second re-run, without running the first again;
   the final run, SIGKILLed in its first epochs; `--resume`: SIGTERM while the final run runs: exit 130 and the
   --resume command;
5. `--resume` ends the study.
"""
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from conftest import ONE_AT_A_TIME, REPO, process_tree, read_trials, run_study, tiny_config
from recipe.config import SEARCHED
from search.storage import whole_files
from search.tuning import give_failed_trials_their_retries, mark_lost_checkpoints, settle_ended_trials

STUDY = str(REPO / "tests" / "studies" / "tiny.toml")
PLANNED = 5


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


def tune_records(root: Path, ray_trial_id: str) -> list[dict]:
    (trial_dir,) = root.glob(f"tune/*_{ray_trial_id}_*")
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


def logged(root: Path, ray_trial_id: str) -> list[dict]:
    """What Tune has logged of a trial so far (its result.json), skipping a line being written."""
    found = []
    for path in root.glob(f"tune/*_{ray_trial_id}_*/result.json"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                found.append(json.loads(line))
    return found


def checkpoints_of(root: Path, ray_trial_id: str) -> list[str]:
    return sorted(p.name for p in root.glob(f"tune/*_{ray_trial_id}_*/checkpoint_*"))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    root = results / "tiny"
    db = root / "optuna.db"
    args = ["--study", STUDY, "--results-dir", str(results)]
    k: dict = {"root": root, "db": db}
    first = args + ["--trials", str(PLANNED), "--revalidate-top", "2", "--no-final", *ONE_AT_A_TIME]

    # 0. SIGTERM as Ray's first processes appear, while ray.init runs: every process the driver's tree held.
    starting: dict = {"tree": {}}

    def stop_while_ray_starts(proc, out):
        for p in process_tree(proc.pid)[1:]:
            starting["tree"].setdefault(p.pid, p)
        if "sigterm" not in starting and any(name_of(p) in ("gcs_server", "raylet") for p in starting["tree"].values()):
            proc.send_signal(signal.SIGTERM)
            starting["sigterm"] = True

    k["ray_start_stopped"] = run_study(first, watch=stop_while_ray_starts, poll=0.1)
    k["ray_start_sigterm"] = starting.get("sigterm")
    k["outlived_driver"] = outliving(list(starting["tree"].values()), grace=10)
    k["left_by_start_stop"] = root.exists()
    k["first_args"] = first

    # 1. SIGTERM once a trial has ended and another is after its first epoch, two from its end (ASHA lets the
    # first trial at a rung go on, so that moment comes): it does not end while Tune stops.
    def stop_midway(proc, out):
        if "sigterm" in k:
            return
        trials = read_trials(db, "tiny")
        ended = sum(t.state.is_finished() for t in trials)
        if ended and any(t.state == TrialState.RUNNING and list(t.intermediate_values) == [1] for t in trials):
            proc.send_signal(signal.SIGTERM)
            k["sigterm"] = True

    k["stopped"] = run_study(first, watch=stop_midway, poll=0.1)  # step 0's command again
    k["after_stop"] = read_trials(db, "tiny")
    k["checkpoints_after_stop"] = {t.user_attrs["ray_trial_id"]: checkpoints_of(root, t.user_attrs["ray_trial_id"])
                                   for t in k["after_stop"] if t.intermediate_values}
    k["plain"] = run_study(args + ["--no-final"])

    # 2. SIGKILL once the trials the SIGTERM stopped midway have gone on (each ended or reported an epoch past
    # the stop) and a trial is midway, with the checkpoint this session's saved state names.
    state_before = sorted((root / "tune").glob("experiment_state-*.json"))[-1].name
    stopped_at = {t.number: max(t.intermediate_values) for t in k["after_stop"]
                  if t.state == TrialState.RUNNING and t.intermediate_values}
    seen: dict = {}

    def kill_midway(proc, out):
        if "tree" in seen:
            return
        trials = read_trials(db, "tiny")
        went_on = all(max((r["epoch"] for r in logged(root, t.user_attrs["ray_trial_id"])), default=0) > stopped_at[t.number]
                      for t in trials if t.number in stopped_at)
        newest = sorted((root / "tune").glob("experiment_state-*.json"))[-1].name
        if not (went_on and newest != state_before and midway_now(trials)):
            return
        # Frozen, the driver can tell Optuna nothing and save no state: what it is killed with is what is seen.
        os.kill(proc.pid, signal.SIGSTOP)
        midway = midway_now(read_trials(db, "tiny"))
        if midway:
            seen["midway"] = midway
            kill_tree(proc, seen)
        else:  # a trial ended meanwhile
            os.kill(proc.pid, signal.SIGCONT)

    def midway_now(trials) -> list[str]:
        running = {t.user_attrs.get("ray_trial_id") for t in trials if t.state == TrialState.RUNNING}
        return [tid for tid in midway_with_checkpoint(root / "tune") if tid in running]

    k["stopped_at"] = stopped_at
    try:
        k["killed"] = run_study(args + ["--resume", "--no-final"], watch=kill_midway, poll=0.1)
    finally:
        clean_up(seen.get("tree", []))
    k["after_kill"] = read_trials(db, "tiny")
    # Tune's experiment as the kill left it, for test_lost_checkpoints_of_unfinished_trials_are_marked.
    k["left"] = tmp_path_factory.mktemp("left") / "tune"
    shutil.copytree(root / "tune", k["left"])
    # The checkpoints of the midway trials, truncated. The one Tune's saved state names may be gone already:
    # Tune deletes a trial's checkpoint as it registers the next, and saves its state only every few seconds.
    k["damaged"] = seen.get("midway", [])
    for trial_id in k["damaged"]:
        for ckpt in root.glob(f"tune/*_{trial_id}_*/checkpoint_*/last.pt"):
            ckpt.write_bytes(ckpt.read_bytes()[:1000])

    # 3. The search resumed to its end, with a second driver and a report started while it holds the study.
    def start_others(proc, out):
        lock = root / "driver.lock"
        if "others" not in k and lock.exists() and lock.read_text().strip() == str(proc.pid):
            commands = {
                "resume": [sys.executable, "-m", "search.run", *args, "--resume"],
                "plain": [sys.executable, "-m", "search.run", *args],
                "report": [sys.executable, "-m", "search.report", "--study", "tiny", "--results-dir", str(results)],
            }
            k["others"] = {name: subprocess.Popen(c, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                  text=True, stdin=subprocess.DEVNULL) for name, c in commands.items()}
            k["pid"] = proc.pid

    # ... and killed in its re-validation, as the first re-run ends (frozen first: what the log holds is what it has).
    reval_seen: dict = {}

    def start_others_then_kill_in_revalidation(proc, out):
        start_others(proc, out)
        if "tree" not in reval_seen and "re-validated trial" in out:
            os.kill(proc.pid, signal.SIGSTOP)
            reval_seen["ended"] = json.loads((root / "revalidation.json").read_text())["runs"]
            kill_tree(proc, reval_seen)

    try:
        k["searched"] = run_study(args + ["--resume", "--no-final"], watch=start_others_then_kill_in_revalidation,
                                  poll=0.1)
    finally:
        clean_up(reval_seen.get("tree", []))
    k["reval_ended_at_kill"] = reval_seen.get("ended", [])
    k["others"] = {name: (*p.communicate(timeout=300), p.returncode) for name, p in k.get("others", {}).items()}
    k["after_search"] = read_trials(db, "tiny")
    k["final_after_search"] = (root / "final").exists()

    # 4. SIGTERM as the re-run left starts: each run of re-validation has ended or is running.
    reval_stop: dict = {}

    def stop_in_revalidation(proc, out):
        if "sigterm" not in reval_stop and "re-validation of trial" in out:
            proc.send_signal(signal.SIGTERM)
            reval_stop["sigterm"] = True

    k["reval_stopped"] = run_study(args + ["--resume"], watch=stop_in_revalidation, poll=0.1)
    k["reval_stop_sigterm"] = reval_stop.get("sigterm")
    k["reval_after_stop"] = json.loads((root / "revalidation.json").read_text())
    k["best_after_reval_stop"] = (root / "best.json").exists()

    # Re-validation goes on, then the final run, killed in its first epochs; SIGTERM in the final run; 5. the end.
    final_seen: dict = {}

    def kill_in_final(proc, out):
        if "tree" not in final_seen and "final epoch 1/" in out:
            kill_tree(proc, final_seen)

    try:
        k["final_killed"] = run_study(args + ["--resume"], watch=kill_in_final, poll=0.1)
    finally:
        clean_up(final_seen.get("tree", []))
    final_stop: dict = {}

    def stop_in_final(proc, out):
        # Once the final run's trial runs: its worker process has become the trial's actor.
        if "sigterm" not in final_stop and "final run: " in out and any(
                "ImplicitFunc" in command_of(p) for p in process_tree(proc.pid)):
            proc.send_signal(signal.SIGTERM)
            final_stop["sigterm"] = True

    k["final_stopped"] = run_study(args + ["--resume"], watch=stop_in_final, poll=0.1)
    k["final_stop_sigterm"] = final_stop.get("sigterm")
    k["ended"] = run_study(args + ["--resume"])
    return k


def name_of(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def command_of(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def outliving(processes: list, grace: float) -> list[str]:
    """The processes still running `grace` seconds on (killed then, by their recorded PID): their names."""
    _, alive = psutil.wait_procs(processes, timeout=grace)
    names = [command_of(p) or name_of(p) for p in alive]
    clean_up(alive)
    return names


def assert_stopped_with_one_line(run, says: str) -> list[str]:
    """Exit status 130, one line on stderr (no traceback) that says `says`; returns the command it gives, as words."""
    assert run.returncode == 130, (run.returncode, run.stderr[-2000:])
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("interrupted; ") and says in line, line
    return shlex.split(line.split(": ", 1)[1])


def test_a_study_stopped_while_ray_starts_says_to_run_the_same_command_and_leaves_no_process(interrupted):
    k = interrupted
    assert k["ray_start_sigterm"], "Ray's processes were never seen starting"
    command = assert_stopped_with_one_line(k["ray_start_stopped"], "nothing of the study was written; run the same "
                                                                  "command again")
    assert command == ["python", "-m", "search.run", *k["first_args"]]
    assert not k["left_by_start_stop"]  # nothing there to refuse that command: step 1 ran it as a new study
    assert k["outlived_driver"] == []


def test_a_study_stopped_in_re_validation_says_how_to_resume_it(interrupted):
    k = interrupted
    assert k["reval_stop_sigterm"], k["reval_stopped"].stdout[-2000:]
    assert "Traceback" not in k["reval_stopped"].stderr
    command = assert_stopped_with_one_line(k["reval_stopped"], "continue with: ")
    assert command[-1] == "--resume" and command[3:-1] == ["--study", STUDY, "--results-dir", str(k["root"].parent)]
    # Not chosen yet: the re-run stopped is neither a result nor a failure, and runs again on --resume (the test of
    # the SIGKILL in re-validation sees it start there).
    assert "chosen" not in k["reval_after_stop"] and not k["best_after_reval_stop"]
    assert len(k["reval_after_stop"]["runs"]) == 1


def test_a_study_stopped_in_its_final_run_says_how_to_resume_it(interrupted):
    k = interrupted
    assert k["final_stop_sigterm"], k["final_stopped"].stdout[-2000:]
    stopped = k["final_stopped"]
    command = assert_stopped_with_one_line(stopped, "continue with: ")
    assert command[-1] == "--resume"
    assert "final: " not in stopped.stdout, stopped.stdout[-2000:]  # no summing up of a run that had not ended


def test_a_study_stopped_by_sigterm_says_how_to_resume_and_keeps_the_checkpoints_of_midway_trials(interrupted):
    k = interrupted
    assert k.get("sigterm") and k["stopped"].returncode == 130, k["stopped"].stderr[-2000:]
    assert "--resume" in k["stopped"].stderr
    ended = {t.user_attrs["ray_trial_id"] for t in k["after_stop"] if t.state.is_finished()}
    midway = {t.user_attrs["ray_trial_id"] for t in k["after_stop"]
              if t.state == TrialState.RUNNING and t.intermediate_values}
    assert 1 <= len(ended) < PLANNED
    # Tune keeps a checkpoint for each trial stopped between epochs (to continue it), none for an ended one.
    assert all(k["checkpoints_after_stop"][t] == [] for t in ended), k["checkpoints_after_stop"]
    assert all(k["checkpoints_after_stop"][t] for t in midway), k["checkpoints_after_stop"]
    plain = k["plain"]
    assert plain.returncode == 2 and "--resume" in plain.stderr and len(plain.stderr.strip().splitlines()) == 1


def test_a_stopped_and_killed_search_resumes_with_every_planned_trial_run_once(interrupted):
    k = interrupted
    assert k["killed"].returncode == -9, k["killed"].stderr[-2000:]
    assert k["damaged"], "the driver was not killed with a trial midway"
    # The search ended (and the driver was killed later, in re-validation).
    assert k["searched"].returncode == -9 and "re-validation: the " in k["searched"].stdout, k["searched"].stderr[-2000:]
    trials = k["after_search"]
    reasons = [(t.state, t.user_attrs.get("reason")) for t in trials]
    assert [t.number for t in trials] == list(range(PLANNED)), reasons  # none lost, none added in place of a lost one
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), reasons
    assert len({t.user_attrs["ray_trial_id"] for t in trials}) == PLANNED
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs"] + 1))
    # Trials that had ended were not run again.
    for before, resumed in (("after_stop", "killed"), ("after_kill", "searched")):
        ended = {t.number for t in k[before] if t.state.is_finished()}
        assert not {n for n in range(PLANNED) if f"trial {n} started" in k[resumed].stdout} & ended, (before, ended)
    assert len((k["root"] / "trials.csv").read_text().strip().splitlines()) == 1 + PLANNED
    # --no-final: no final run, until a later --resume.
    assert "final epoch" not in k["searched"].stdout and not k["final_after_search"]


def test_trials_stopped_midway_go_on_from_their_checkpoints(interrupted):
    # Tune's record of a trial the SIGTERM stopped midway, as the SIGKILL found it: every epoch in order, going
    # on past the stop, never starting over. Tune logs an epoch's result before it registers that epoch's
    # checkpoint, so a stop between the two has the trial run that one epoch again, from the checkpoint
    # before it and with its random state: to the same figures.
    k = interrupted
    assert k["stopped_at"]
    for t in k["after_kill"]:
        if t.number not in k["stopped_at"]:
            continue
        records = tune_records(k["left"].parent, t.user_attrs["ray_trial_id"])
        epochs = [r["epoch"] for r in records]
        assert epochs == sorted(epochs) and sorted(set(epochs)) == list(range(1, max(epochs) + 1)), epochs
        assert max(epochs) > k["stopped_at"][t.number], epochs
        repeated = [e for e in set(epochs) if epochs.count(e) > 1]
        assert len(repeated) <= 1 and all(epochs.count(e) == 2 for e in repeated), epochs
        for e in repeated:
            twice = [(r["train_loss"], r["eval_acc"]) for r in records if r["epoch"] == e]
            assert twice[0] == twice[1], twice


def test_a_damaged_trial_checkpoint_restarts_that_trial_from_epoch_0_once(interrupted):
    k = interrupted
    assert k["damaged"], "the driver was not killed with a trial midway: no checkpoint was damaged"
    trials = {t.user_attrs["ray_trial_id"]: t for t in k["after_search"]}
    for trial_id in k["damaged"]:
        t = trials[trial_id]
        lines = [ln for ln in k["searched"].stdout.splitlines() if f"trial {t.number}: its checkpoint" in ln]
        assert len(lines) == 1, (t.number, t.state, t.user_attrs, k["killed"].stdout[-2000:], k["searched"].stdout[-3000:])
        (line,) = lines
        # Truncated, or deleted by Tune after the state it resumed from was saved (both are this fault).
        assert f"_{trial_id}_" in line and ("could not be used (not a readable checkpoint" in line
                                            or "could not be used (not there)" in line), line
        assert "restarted from epoch 0" in t.user_attrs["restarted"]
        epochs = [r["epoch"] for r in tune_records(k["root"], trial_id)]
        restarts = [i for i in range(1, len(epochs)) if epochs[i] <= epochs[i - 1] and epochs[i] == 1]
        assert len(restarts) == 1 and epochs[-1] == t.user_attrs["epochs"], epochs
    assert "crashed; retrying" not in k["searched"].stdout  # the damaged file was not tried again and again


def test_lost_checkpoints_of_unfinished_trials_are_marked_so_their_trials_restart(interrupted):
    left = interrupted["left"]  # Tune's experiment as the SIGKILL left it
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


def test_a_driver_killed_in_re_validation_resumes_it_without_running_an_ended_re_run_again(interrupted):
    k = interrupted
    ended = k["reval_ended_at_kill"]
    assert len(ended) == 1 and ended[0]["status"] == "completed", ended  # one re-run at a time: the first
    record = json.loads((k["root"] / "revalidation.json").read_text())
    top = [r["trial_id"] for r in record["trials"]]
    complete = [t for t in k["after_search"] if t.state == TrialState.COMPLETE]
    assert len(top) == min(2, len(complete)) >= 1
    resumed = k["final_killed"].stdout  # the --resume after the kill
    started = {n for n in top if f"re-validation of trial {n} (seed 1) started" in resumed}
    assert started == set(top) - {r["trial_id"] for r in ended}, resumed[-3000:]
    # One run of each top trial, those that had ended kept as they were; optuna.db untouched by re-validation.
    assert sorted(r["trial_id"] for r in record["runs"]) == sorted(top)
    assert all(r in record["runs"] for r in ended)
    assert all(r["status"] == "completed" and r["epochs"] == 3 for r in record["runs"]), record["runs"]
    assert read_trials(k["db"], "tiny") == k["after_search"]
    best = json.loads((k["root"] / "best.json").read_text())
    assert best["trial_id"] == record["chosen"] and best["revalidated"]


def test_a_driver_killed_in_its_final_run_resumes_it_to_a_whole_final_run(interrupted):
    k = interrupted
    killed = k["final_killed"]
    assert killed.returncode == -9 and "final: " not in killed.stdout, killed.stdout[-2000:]
    assert " started:" not in killed.stdout  # the search was over: only re-validation and the final run went on
    assert k["ended"].returncode == 0, k["ended"].stderr[-2000:]
    assert " started" not in k["ended"].stdout  # nor any re-validation run: they had all ended
    assert read_trials(k["db"], "tiny") == k["after_search"]
    # One seed on CPU by default, in the same layout as several.
    assert sorted(p.name for p in (k["root"] / "final").iterdir()) == ["seed-0", "summary.json"]
    final = k["root"] / "final" / "seed-0"
    summary = json.loads((final / "summary.json").read_text())
    best = json.loads((k["root"] / "best.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    assert {name: summary["config"][name] for name in best["params"]} == best["params"]
    rows = (final / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2]
    aggregate = json.loads((k["root"] / "final" / "summary.json").read_text())
    assert aggregate["seeds"] == [0] and aggregate["mean_final_eval_acc"] == summary["final_eval_acc"]
    assert aggregate["std_final_eval_acc"] is None
    assert k["ended"].stdout.strip().splitlines()[-1] == (
        f"final: {100 * summary['final_eval_acc']:.2f}% test accuracy (seed 0)")
    assert not list(k["root"].rglob("checkpoint_*"))  # nothing that will ever be resumed is kept


def test_a_second_driver_on_a_running_study_is_refused_with_one_line_and_writes_nothing(interrupted):
    k = interrupted
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
        self.filesystem = whole_files()  # Tune's, for a study on a local disk


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


def test_asha_does_not_judge_again_the_epochs_a_resumed_trial_runs_again_nor_the_rungs_it_passed():
    import math
    from types import SimpleNamespace

    from search.tuning import StudyASHA

    asha = StudyASHA(time_attr="epoch", metric="eval_acc", mode="max", max_t=8, grace_period=1, reduction_factor=2)
    # After a resume: ASHA (rungs at epochs 1, 2, 4) has seen nothing; Tune's record says where each trial was.
    trials = {name: SimpleNamespace(trial_id=name, last_result=last) for name, last in
              (("leader", {}), ("restarted", {"epoch": 2, "eval_acc": 0.1}), ("newcomer", {}),
               ("resumed", {"epoch": 2, "eval_acc": 0.1}))}
    for trial in trials.values():
        asha.on_trial_add(None, trial)

    def result(name, epoch, acc):
        return asha.on_trial_result(None, trials[name], {"epoch": epoch, "eval_acc": acc})

    for epoch in (1, 2, 3, 4):
        assert result("leader", epoch, 0.9) == asha.CONTINUE
    # Epochs 1 and 2 again, from epoch 0: judged before (it went on past them then), not again.
    assert result("restarted", 1, 0.0) == asha.CONTINUE and result("restarted", 2, 0.0) == asha.CONTINUE
    # A new trial as poor at epoch 1 is stopped there.
    assert result("newcomer", 1, 0.0) == asha.STOP
    # A trial resumed after epoch 2 passed rungs 1 and 2: epoch 3 is not judged at either; epoch 4 is, at rung 4.
    assert result("resumed", 3, 0.0) == asha.CONTINUE
    assert result("resumed", 4, 0.0) == asha.STOP
    rungs = dict(asha._trial_info["leader"]._rungs)
    assert rungs[1]["leader"] == 0.9 and math.isnan(rungs[1]["resumed"]) and math.isnan(rungs[2]["resumed"])
    assert rungs[4]["resumed"] == 0.0


def test_a_failed_trial_resumed_with_its_retries_counts_no_failures(tmp_path):
    experiment = tmp_path / "final-tune"
    experiment.mkdir()
    failed = {"num_failures": 2, "num_failures_after_restore": 0, "error_filename": "error.txt"}
    state = {"trial_data": [[json.dumps({"trial_id": "a", "status": "ERROR"}), json.dumps(failed)],
                            [json.dumps({"trial_id": "b", "status": "TERMINATED"}), json.dumps({"num_failures": 1})]],
             "runner_data": {}, "stats": {}}
    path = experiment / "experiment_state-2026-01-01_00-00-00.json"
    path.write_text(json.dumps(state))
    # Tune keeps the count across a restore: with max_failures=2 a trial resumed at 2 has no retry left.
    assert give_failed_trials_their_retries(str(experiment)) == ["a"]
    (a, meta_a), (b, meta_b) = [(json.loads(t), json.loads(m)) for t, m in json.loads(path.read_text())["trial_data"]]
    assert meta_a["num_failures"] == meta_a["num_failures_after_restore"] == 0 and meta_a["error_filename"] == "error.txt"
    assert meta_b["num_failures"] == 1  # a trial that ended well keeps its record
    assert give_failed_trials_their_retries(str(experiment)) == []


def test_a_new_study_refuses_tune_files_an_earlier_study_left_on_its_storage(tmp_path):
    from recipe.config import RecipeError
    from search.plan import Plan
    from search.study import StudyPaths
    from search.study import load as load_study
    from search.tuning import check_no_earlier_experiments

    storage = tmp_path / "shared" / "tiny"
    plan = Plan(spec=load_study(STUDY), paths=StudyPaths(tmp_path / "results" / "tiny"), resume=False,
                storage=str(storage), address=None, final=True)
    check_no_earlier_experiments(plan)  # nothing there
    (storage / "final-tune").mkdir(parents=True)
    (storage / "final-tune" / "tuner.pkl").write_bytes(b"")  # what Tune restores an experiment from
    with pytest.raises(RecipeError, match=f"{storage}/final-tune: Ray Tune's files of an earlier study 'tiny'"):
        check_no_earlier_experiments(plan)


def test_each_re_run_is_logged_once_as_it_ends_and_a_retry_replaces_its_failure(tmp_path):
    from types import SimpleNamespace

    from search.study import load as load_study
    from search.tuning import RerunLog, logged_reruns

    log = str(tmp_path / "revalidation.json")
    view = RerunLog(log, load_study(STUDY))  # horizon 3
    trial = SimpleNamespace(trial_id="r1", config={"trial_id": 2, "seed": 1}, error_file=None,
                            last_result={"epoch": 2, "eval_acc": 0.3, "time_total_s": 5.0, "timestamp": 100},
                            get_error=lambda: "Failure # 2\nTraceback ...\nRuntimeError: out of memory")
    view.on_trial_error(0, [], trial)
    (failed,) = logged_reruns(log)
    assert (failed["status"], failed["value"], failed["ray_trial_id"]) == ("failed", None, "r1")
    assert failed["reason"] == "RuntimeError: out of memory (after 2 attempts)"  # max_failures 1: two attempts
    trial.last_result = {"epoch": 3, "eval_acc": 0.4, "time_total_s": 9.0, "timestamp": 130}  # retried by --resume
    view.on_trial_complete(0, [], trial)
    (done,) = logged_reruns(log)
    assert (done["trial_id"], done["seed"], done["status"], done["value"], done["epochs"]) == (2, 1, "completed", 0.4, 3)
