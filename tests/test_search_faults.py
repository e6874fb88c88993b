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
   the final stage (the chosen settings' run, then the seed recipe's beside it, one at a time), SIGKILLed once
   the first has ended and the baseline's is midway (without a baseline, the seed recipe chosen: in the final
   run's first epochs); `--resume`: SIGTERM while the final run runs: exit 130 and the --resume command;
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
from search.study import load as load_study

STUDY = str(REPO / "tests" / "studies" / "tiny.toml")
PLANNED = 5


def recorded_checkpoints(root: Path) -> dict[str, str]:
    """The search's checkpoints as the study's record holds them (checkpoints.json): trial number -> path."""
    try:
        return json.loads((root / "checkpoints.json").read_text()).get("tune", {})
    except (OSError, ValueError):
        return {}


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


def tune_records(root: Path, number: int) -> list[dict]:
    """Tune's records (result.json) of Optuna trial `number`, over all its Tune runs (a continued trial gets a new
    Tune trial in each driver session), in the order they were written."""
    runs = []
    for path in root.glob("tune/*/result.json"):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        if records and records[0]["config"].get("trial_id") == number:
            runs.append(records)
    return [r for run in sorted(runs, key=lambda run: run[0]["timestamp"]) for r in run]


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
    # Three final seeds: whether or not the seed recipe is chosen (no baseline then; which trial wins depends on the
    # CPU's kernels), the final stage has a run that ends before the one the kill finds midway, and one after it.
    first = args + ["--trials", str(PLANNED), "--revalidate-top", "2", "--final-seeds", "3", "--no-final",
                    *ONE_AT_A_TIME]

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
    # the stop) and a trial is midway, with a checkpoint of this session in the study's record.
    stopped_at = {t.number: max(t.intermediate_values) for t in k["after_stop"]
                  if t.state == TrialState.RUNNING and t.intermediate_values}
    seen: dict = {}

    def kill_midway(proc, out):
        if "tree" in seen:
            return
        trials = read_trials(db, "tiny")
        went_on = all(max((r["epoch"] for r in logged(root, t.user_attrs["ray_trial_id"])), default=0) > stopped_at[t.number]
                      for t in trials if t.number in stopped_at)
        if not (went_on and midway_now(trials)):
            return
        # Frozen, the driver can tell Optuna nothing and save no state: what it is killed with is what is seen.
        os.kill(proc.pid, signal.SIGSTOP)
        midway = midway_now(read_trials(db, "tiny"))
        if midway:
            seen["midway"] = midway
            seen["numbers"] = {t.user_attrs["ray_trial_id"]: t.number for t in read_trials(db, "tiny")}
            kill_tree(proc, seen)
        else:  # a trial ended meanwhile
            os.kill(proc.pid, signal.SIGCONT)

    def midway_now(trials) -> list[str]:
        """Tune ids of the running trials whose recorded checkpoint is their own in this session."""
        recorded = recorded_checkpoints(root)
        return [t.user_attrs["ray_trial_id"] for t in trials if t.state == TrialState.RUNNING
                and f"_{t.user_attrs.get('ray_trial_id')}_" in recorded.get(str(t.number), "")]

    k["stopped_at"] = stopped_at
    try:
        k["killed"] = run_study(args + ["--resume", "--no-final"], watch=kill_midway, poll=0.1)
    finally:
        clean_up(seen.get("tree", []))
    k["after_kill"] = read_trials(db, "tiny")
    # Tune's experiment as the kill left it, for test_trials_stopped_midway_go_on_from_their_checkpoints.
    k["left"] = tmp_path_factory.mktemp("left") / "tune"
    shutil.copytree(root / "tune", k["left"])
    # The checkpoints of the midway trials, truncated. The one Tune's saved state names may be gone already:
    # Tune deletes a trial's checkpoint as it registers the next, and saves its state only every few seconds.
    k["damaged"] = seen.get("midway", [])
    k["numbers_at_kill"] = seen.get("numbers", {})
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

    # Re-validation goes on, then the final stage (one run at a time: the chosen settings' seeds 0 to 2, then the
    # baseline's), killed after the first epoch of its last run but one, those before it ended; SIGTERM in the final
    # stage (a whole run is left: the SIGTERM comes before the stage ends); 5. the end.
    final_seen: dict = {}

    def kill_in_final(proc, out):
        if "tree" not in final_seen and ("final epoch 1/2 (seed 1, baseline)" in out
                                         or "baseline: none" in out and "final epoch 1/2 (seed 1)" in out):
            kill_tree(proc, final_seen)
            final_seen["ended"] = {run: json.loads((root / "final" / run / "summary.json").read_text())["status"]
                                   for run in FINAL_RUNS if (root / "final" / run / "summary.json").is_file()}

    try:
        k["final_killed"] = run_study(args + ["--resume"], watch=kill_in_final, poll=0.1)
    finally:
        clean_up(final_seen.get("tree", []))
    k["final_at_kill"] = final_seen.get("ended")
    final_stop: dict = {}

    def stop_in_final(proc, out):
        # Once the final run's trial runs: its worker process has become the trial's actor.
        if "sigterm" not in final_stop and ("final run: " in out or "final runs: " in out) and any(
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
        records = tune_records(k["left"].parent, t.number)
        epochs = [r["epoch"] for r in records]
        assert epochs == sorted(epochs) and sorted(set(epochs)) == list(range(1, max(epochs) + 1)), epochs
        assert max(epochs) > k["stopped_at"][t.number], epochs
        repeated = [e for e in set(epochs) if epochs.count(e) > 1]
        assert len(repeated) <= 1 and all(epochs.count(e) == 2 for e in repeated), epochs
        for e in repeated:
            twice = [(r["train_loss"], r["eval_acc"]) for r in records if r["epoch"] == e]
            assert twice[0] == twice[1], twice


def test_a_damaged_trial_checkpoint_restarts_that_trial_from_epoch_0_once(interrupted):
    from search import trainable

    k = interrupted
    assert k["damaged"], "the driver was not killed with a trial midway: no checkpoint was damaged"
    trials = {t.number: t for t in k["after_search"]}
    for trial_id in k["damaged"]:
        t = trials[k["numbers_at_kill"][trial_id]]
        lines = [ln for ln in k["searched"].stdout.splitlines() if f"trial {t.number}: its checkpoint" in ln]
        assert len(lines) == 1, (t.number, t.state, t.user_attrs, k["killed"].stdout[-2000:], k["searched"].stdout[-3000:])
        (line,) = lines
        # Truncated, or deleted by Tune after the state it resumed from was saved (both are this fault).
        assert f"_{trial_id}_" in line and ("could not be used (not a readable checkpoint" in line
                                            or "could not be used (not there)" in line), line
        assert "restarted from epoch 0" in t.user_attrs["restarted"]
        records = tune_records(k["root"], t.number)
        epochs = [r["epoch"] for r in records]
        # A restart shows where the epochs fall back to 1, or where the first result after it says so: a killed
        # driver's Tune run of the trial may have left no records (Tune keeps them in a local staging directory
        # until it syncs them to the storage, every few minutes and as the trial ends).
        restarts = [i for i in range(len(epochs)) if trainable.RESTARTED in records[i]
                    or (i and epochs[i] <= epochs[i - 1] and epochs[i] == 1)]
        assert len(restarts) == 1 and epochs[-1] == t.user_attrs["epochs"], epochs
    assert "crashed; retrying" not in k["searched"].stdout  # the damaged file was not tried again and again


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


FINAL_RUNS = ("seed-0", "seed-1", "seed-2", "baseline/seed-0", "baseline/seed-1", "baseline/seed-2")  # as they run


def final_runs_of(k: dict) -> list[str]:
    """The fault study's final runs: its three seeds, and the seed recipe's beside them unless it is the choice."""
    best = json.loads((k["root"] / "best.json").read_text())
    return list(FINAL_RUNS if best["params"] != load_study(STUDY).seed_params() else FINAL_RUNS[:3])


def test_a_driver_killed_in_its_final_run_resumes_it_to_a_whole_final_run(interrupted):
    k = interrupted
    killed = k["final_killed"]
    assert killed.returncode == -9 and "final: " not in killed.stdout, killed.stdout[-2000:]
    assert " started:" not in killed.stdout  # the search was over: only re-validation and the final run went on
    assert k["ended"].returncode == 0, k["ended"].stderr[-2000:]
    assert " started" not in k["ended"].stdout  # nor any re-validation run: they had all ended
    assert read_trials(k["db"], "tiny") == k["after_search"]
    best = json.loads((k["root"] / "best.json").read_text())
    runs = final_runs_of(k)
    baseline = len(runs) == 6  # trained beside the choice, unless it is the seed recipe
    assert sorted(p.name for p in (k["root"] / "final").iterdir()) == ["baseline"] * baseline + [
        "seed-0", "seed-1", "seed-2", "summary.json"]
    seed_params = load_study(STUDY).seed_params()
    for run in runs:  # each whole, each epoch once, with its group's settings and its own seed
        summary = json.loads((k["root"] / "final" / run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["epochs_run"] == 2, run
        params = seed_params if run.startswith("baseline/") else best["params"]
        assert {name: summary["config"][name] for name in best["params"]} == params
        assert summary["config"]["seed"] == int(run[-1])
        rows = (k["root"] / "final" / run / "metrics.csv").read_text().strip().splitlines()[1:]
        assert [int(r.split(",")[0]) for r in rows] == [1, 2], run
    # The same summary as the runs' own records make, and the last line says it.
    from search.results import final_line, final_summary
    from search.study import StudyPaths

    aggregate = json.loads((k["root"] / "final" / "summary.json").read_text())
    assert aggregate["seeds"] == [0, 1, 2] and aggregate["status"] == "completed"
    assert aggregate == json.loads(json.dumps(final_summary(StudyPaths(k["root"]), [0, 1, 2], baseline=baseline,
                                                            skipped=aggregate.get("baseline_skipped"))))
    last = k["ended"].stdout.strip().splitlines()[-1]
    assert last == final_line(aggregate) and last.startswith("final: ") and " test accuracy over 3 seeds" in last
    if baseline:
        assert "; the seed recipe: " in last and "paired over 3 seeds" in last
        chosen, base = ([json.loads((k["root"] / "final" / r / "summary.json").read_text())["final_eval_acc"]
                         for r in group] for group in (runs[:3], runs[3:]))
        assert aggregate["difference"]["values"] == [c - b for c, b in zip(chosen, base)]
    else:
        assert last.endswith("the chosen settings are the seed recipe's own: no baseline to train")
    assert not list(k["root"].rglob("checkpoint_*"))  # nothing that will ever be resumed is kept


def test_a_driver_killed_in_its_final_stage_runs_no_ended_run_again_and_continues_the_midway_one(interrupted):
    k = interrupted
    runs = final_runs_of(k)
    # Killed with the runs before the last but one ended (the chosen settings' and, with a baseline, the seed
    # recipe's seed 0 too), that one after its first epoch, the last not begun.
    midway = runs[-2]
    assert k["final_at_kill"] == {run: "completed" for run in runs[:-2]} | (
        {midway: "running"} if midway in k["final_at_kill"] else {}), k["final_at_kill"]
    resumed = k["final_stopped"].stdout + k["ended"].stdout
    for run in runs[:-2]:  # not run again
        words = f"seed {run[-1]}" + (", baseline" if run.startswith("baseline/") else "")
        assert f"final epoch 1/2 ({words})" not in resumed and f"final epoch 2/2 ({words})" not in resumed
    rows = (k["root"] / "final" / midway / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2]  # epoch 1 once: it went on from its checkpoint


@pytest.fixture(scope="module")
def extended(interrupted, tmp_path_factory):
    """A copy of the ended study, resumed with two trials more (--resume --trials 7): before, its record; after, the run."""
    results = tmp_path_factory.mktemp("extended") / "results"
    shutil.copytree(interrupted["root"].parent, results)
    root = results / "tiny"
    before = {"trials": read_trials(root / "optuna.db", "tiny"), "best": json.loads((root / "best.json").read_text()),
              "revalidation": json.loads((root / "revalidation.json").read_text()),
              "final": (root / "final" / "seed-0" / "summary.json").read_text()}
    run = run_study(["--study", STUDY, "--results-dir", str(results), "--resume", "--trials", str(PLANNED + 2)])
    return root, before, run


def test_a_study_resumed_with_more_trials_runs_only_those_and_trains_its_final_run_again_only_if_the_choice_changed(
        extended):
    root, before, run = extended
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith(f"study 'tiny': {PLANNED + 2} trials, ")
    trials = read_trials(root / "optuna.db", "tiny")
    assert [t.number for t in trials] == list(range(PLANNED + 2)) and all(t.state.is_finished() for t in trials)
    assert trials[:PLANNED] == before["trials"]  # the ended ones untouched, none run again
    assert {n for n in range(PLANNED + 2) if f"trial {n} started" in run.stdout} == {PLANNED, PLANNED + 1}
    # Sampled anew (TPE over the whole record, seeded apart from its earlier draws): no repeat of an earlier trial.
    earlier = [t.params for t in before["trials"]]
    assert all(t.params not in earlier for t in trials[PLANNED:]), [t.params for t in trials]
    assert len((root / "trials.csv").read_text().strip().splitlines()) == 1 + PLANNED + 2
    # Re-validation covers the top 2 of all 7; a top trial re-run before is not re-run.
    record = json.loads((root / "revalidation.json").read_text())
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number))
    top = [t.number for t in complete[:2]]
    assert [r["trial_id"] for r in record["trials"]] == top
    rerun_before = {r["trial_id"] for r in before["revalidation"]["runs"]}
    started = {n for n in top if f"re-validation of trial {n} (seed 1) started" in run.stdout}
    assert started == set(top) - rerun_before, run.stdout[-3000:]
    best = json.loads((root / "best.json").read_text())
    assert best["trial_id"] == record["chosen"]
    final = root / "final" / "seed-0"
    if best["trial_id"] == before["best"]["trial_id"]:
        assert f"trial {best['trial_id']} stays the choice: its final runs are not trained again" in run.stdout
        assert "final epoch" not in run.stdout and (final / "summary.json").read_text() == before["final"]
    else:
        assert f"the choice changed to trial {best['trial_id']}: the final runs train again" in run.stdout
        summary = json.loads((final / "summary.json").read_text())
        assert summary["status"] == "completed" and "final epoch 2/2" in run.stdout
        assert {k: summary["config"][k] for k in best["params"]} == best["params"]
    assert not list(root.rglob("checkpoint_*"))


def test_an_extended_study_is_unfinished_until_it_has_chosen_again_and_knows_what_its_final_runs_trained(tmp_path):
    from search.resume import extend, final_settings
    from search.run import study_state
    from search.study import StudyPaths

    from search.study import load as load_study

    paths = StudyPaths(tmp_path / "tiny")
    (paths.final / "seed-0").mkdir(parents=True)
    paths.spec.write_text(json.dumps(load_study(STUDY).replace(trials=5).to_dict()))
    paths.trials_csv.write_text("trial_id,state\n" + "".join(f"{n},complete\n" for n in range(5)))
    paths.best.write_text(json.dumps({"trial_id": 0}))
    assert final_settings(paths) is None  # a final run that has not written its config yet
    settings = {"lr": 0.1, "weight_decay": 5e-4, "dropout": 0.2, "label_smoothing": 0.1}
    (paths.final / "seed-0" / "config.json").write_text(json.dumps({**settings, "epochs": 2, "seed": 0}))
    (paths.final / "summary.json").write_text(json.dumps({"status": "completed", "seeds": [0]}))
    assert study_state(paths) == "finished" and final_settings(paths) == settings
    assert not extend(paths, 5)  # the same count: nothing to extend
    assert extend(paths, 7)
    assert json.loads(paths.spec.read_text())["trials"] == 7 and study_state(paths) == "interrupted"
    # The longer search ends (trials.csv again); a stop before the study has chosen again (in re-validation) is
    # not "finished" by the final runs of the choice before: the hint is --resume, not the report.
    paths.trials_csv.write_text("trial_id,state\n" + "".join(f"{n},complete\n" for n in range(7)))
    assert study_state(paths) == "interrupted"
    assert final_settings(paths) == settings  # what the final runs trained, to compare with the next choice


def test_a_phase_that_tune_ended_before_its_runs_did_is_a_stop_not_a_phase_done():
    from types import SimpleNamespace

    from search.stopping import Stop
    from search.tuning import fit

    def tuner(ended: int, failed: int):  # what Tune's fit returns: stopped by a SIGUSR1 from elsewhere, or not
        return SimpleNamespace(fit=lambda: SimpleNamespace(num_terminated=ended, num_errors=failed))

    assert fit(tuner(2, 1), 3, Stop()).num_terminated == 2  # every run ended, one of them failing for good
    with pytest.raises(KeyboardInterrupt):
        fit(tuner(1, 1), 3, Stop())  # one still running: resumed later, not taken as done


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


def test_a_resumed_search_hands_out_its_unfinished_trials_first_then_samples_new_ones_that_repeat_none(tmp_path):
    from search.resume import search_left
    from search.searcher import StudySearcher
    from search.study import load as load_study

    spec = load_study(STUDY).replace(trials=5)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = StudySearcher(spec, storage)
    before = [searcher.suggest(f"a{i}") for i in range(3)]  # the seed recipe (trial 0), then two sampled
    searcher.on_trial_complete("a0", {"epoch": 3, "eval_acc": 0.3})
    searcher.on_trial_result("a2", {"epoch": 1, "eval_acc": 0.1})
    # The driver is killed with trials 1 and 2 running; the next one takes up the record.
    resumed = StudySearcher(spec, storage)
    study = resumed.study
    assert search_left(study, spec.trials) == ([1, 2], 2)
    after = [resumed.suggest(f"b{i}") for i in range(4)]
    assert [a["trial_id"] for a in after] == [1, 2, 3, 4]
    assert after[:2] == before[1:]  # the same trials, settings and all
    assert study.trials[2].intermediate_values == {1: 0.1}
    settings = [tuple(c[k] for k in SEARCHED) for c in before + after]
    assert len(set(settings[3:])) == 4 and not set(settings[5:]) & set(settings[:3])  # none sampled again
    assert resumed.tally() == {"complete": 1, "pruned": 0, "fail": 0}


def test_asha_takes_its_rungs_from_the_record_and_judges_no_trial_twice_at_a_rung(tmp_path):
    import dataclasses
    from types import SimpleNamespace

    from search.asha import StudyASHA
    from search.study import load as load_study

    spec = load_study(STUDY)
    spec = spec.replace(asha=dataclasses.replace(spec.asha, horizon=8))  # rungs at epochs 1, 2 and 4
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    # The record: trial 0 passed rungs 1, 2 and 4; trial 1 was stopped at rung 1; trial 2 ran two epochs.
    for values in ({1: 0.5, 2: 0.6, 3: 0.6, 4: 0.7}, {1: 0.1}, {1: 0.4, 2: 0.5}):
        trial = study.ask()
        for epoch, value in values.items():
            trial.report(value, epoch)
    asha = StudyASHA(spec, study)

    def result(number, epoch, acc):
        return asha.on_trial_result(None, SimpleNamespace(config={"trial_id": number}), {"epoch": epoch, "eval_acc": acc})

    # Trial 2 continued (or restarted from epoch 0): the rungs it had passed are not judged again, whatever it shows.
    assert [result(2, epoch, 0.0) for epoch in (1, 2, 3)] == [asha.CONTINUE] * 3
    assert result(2, 4, 0.65) == asha.STOP  # at rung 4, against the record's trial 0 (0.7)
    # A new trial at rung 1 is judged against the record's three (cutoff 0.4), then against those and itself.
    assert result(3, 1, 0.05) == asha.STOP
    assert result(4, 1, 0.3) == asha.CONTINUE  # cutoff 0.25
    assert result(4, 8, 0.9) == asha.STOP  # the horizon


def test_each_runs_checkpoint_is_recorded_as_tune_reports_it_and_freed_once_nothing_continues_from_it(tmp_path):
    from types import SimpleNamespace

    from search.resume import CheckpointRecord, KeepLatestCheckpoint
    from search.study import StudyPaths

    paths = StudyPaths(tmp_path / "results" / "tiny")
    paths.root.mkdir(parents=True)
    storage = tmp_path / "storage" / "tiny"
    record = CheckpointRecord(paths, str(storage))
    keep = KeepLatestCheckpoint(record, "tune", errored=True)
    trial = SimpleNamespace(config={"trial_id": 3})

    def reported(tune_trial: str, n: int) -> SimpleNamespace:
        path = storage / "tune" / tune_trial / f"checkpoint_{n:06d}"
        path.mkdir(parents=True)
        return SimpleNamespace(path=str(path))

    first = reported("run_recipe_aaaa_00000_0", 1)
    keep.on_checkpoint(0, [], trial, first)
    assert record.uris("tune") == {"3": first.path}
    # The driver stopped; the next one's Tune run of trial 3 goes on from it and reports its next checkpoint.
    second = reported("run_recipe_bbbb_00000_0", 2)
    keep.on_checkpoint(0, [], trial, second)
    assert json.loads((paths.root / "checkpoints.json").read_text()) == {
        "tune": {"3": "tune/run_recipe_bbbb_00000_0/checkpoint_000002"}}  # relative: a moved storage is found again
    assert not Path(first.path).exists()  # nothing will continue from the earlier run's
    keep.on_trial_complete(0, [], trial)
    assert not Path(second.path).exists() and not (paths.root / "checkpoints.json").exists()


def test_a_resumed_re_validation_and_final_stage_run_only_what_their_records_do_not_hold_as_ended(tmp_path):
    from search.resume import final_runs_left, reruns_left
    from search.study import StudyPaths

    logged = [{"trial_id": 1, "status": "completed"}, {"trial_id": 2, "status": "failed"},
              {"trial_id": 5, "status": "diverged"}]
    assert reruns_left([4, 1, 2, 5], logged) == [4, 2]  # a failed re-run again, with its retries: a new Tune run
    paths = StudyPaths(tmp_path / "tiny")
    for seed, status, baseline in ((0, "completed", False), (1, "interrupted", False), (3, "diverged", False),
                                   (0, "interrupted", True), (1, "completed", True)):
        paths.final_run(seed, baseline).mkdir(parents=True)
        (paths.final_run(seed, baseline) / "summary.json").write_text(json.dumps({"status": status}))
    assert final_runs_left(paths, [0, 1, 2, 3]) == ["seed-1", "seed-2"]
    # With the baseline: its runs too, each by its own record.
    assert final_runs_left(paths, [0, 1, 2, 3], baseline=True) == ["seed-1", "seed-2", "baseline/seed-0",
                                                                   "baseline/seed-2", "baseline/seed-3"]


@pytest.mark.parametrize("content, why", [(b"PK\x03\x04 cut short", "not a readable checkpoint"),
                                          (None, "not there)")], ids=["truncated", "lost"])
def test_a_trial_whose_checkpoint_is_truncated_or_lost_restarts_from_epoch_0_and_says_why(tmp_path, monkeypatch, capsys,
                                                                                          content, why):
    from search import trainable

    tune_copy = tmp_path / "tune" / "run_recipe_aaaa_00000_0" / "checkpoint_000001"  # as the study's record names it
    if content is not None:  # else lost: deleted by Tune, or by a full disk's cleaner
        tune_copy.mkdir(parents=True)
        (tune_copy / "last.pt").write_bytes(content)
    reports = []
    monkeypatch.setattr(trainable.tune, "get_checkpoint", lambda: None)  # a new Tune run of a resumed study
    monkeypatch.setattr(trainable.tune, "report", lambda metrics, checkpoint=None: reports.append(metrics))
    monkeypatch.chdir(tmp_path)
    config = tiny_config(epochs=2).to_dict()
    params = {k: config.pop(k) for k in SEARCHED} | {"trial_id": 3}
    trainable.run_recipe(params, base=config, threads=1, checkpoints={"3": str(tune_copy)})
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


SEED_RECIPE = {"lr": 0.1, "weight_decay": 5e-4, "dropout": 0.2, "label_smoothing": 0.1}
OTHER = {"lr": 0.3, "weight_decay": 1e-4, "dropout": 0.0, "label_smoothing": 0.0}


def final_dirs(tmp_path: Path, runs: dict[str, tuple[dict | None, str]], seeds: list[int], baseline: bool):
    """final/ as a study leaves it: each run's config.json (its settings; None: none written) and summary.json (its
    status), and final/summary.json over `seeds`; and the study's checkpoint record (empty)."""
    from search.resume import CheckpointRecord
    from search.results import final_summary
    from search.study import StudyPaths

    paths = StudyPaths(tmp_path / "tiny")
    for run, (settings, status) in runs.items():
        (paths.final / run).mkdir(parents=True)
        if settings is not None:
            (paths.final / run / "config.json").write_text(json.dumps({**settings, "seed": int(run[-1]), "epochs": 4}))
        (paths.final / run / "summary.json").write_text(json.dumps({"status": status, "final_eval_acc": 0.5}))
    (paths.final / "summary.json").write_text(json.dumps(final_summary(paths, seeds, baseline=baseline)))
    return paths, CheckpointRecord(paths, str(tmp_path))


def final_listing(paths) -> list[str]:
    return sorted(str(p.relative_to(paths.final)) for p in paths.final.rglob("*") if p.name != "config.json"
                  and p.name != "summary.json" or p.parent == paths.final)


def test_a_changed_choice_trains_its_final_runs_again_and_keeps_the_baselines_which_are_the_same(tmp_path):
    from search.resume import clear_final

    paths, record = final_dirs(tmp_path, {"seed-0": (OTHER, "completed"), "seed-1": (OTHER, "completed"),
                                          "baseline/seed-0": (SEED_RECIPE, "completed"),
                                          "baseline/seed-1": (SEED_RECIPE, "running")}, [0, 1], baseline=True)
    record.set("final-tune", "seed-1", "final-tune/a/checkpoint_000001")
    record.set("final-tune", "baseline/seed-1", "final-tune/b/checkpoint_000001")
    clear_final(paths, str(tmp_path), keep_baseline=True, seed_params=SEED_RECIPE)
    assert sorted(p.name for p in paths.final.iterdir()) == ["baseline", "summary.json"]
    assert sorted(p.name for p in (paths.final / "baseline").iterdir()) == ["seed-0", "seed-1"]
    assert record.read() == {"final-tune": {"baseline/seed-1": "final-tune/b/checkpoint_000001"}}  # it goes on
    summary = json.loads((paths.final / "summary.json").read_text())  # the same seeds, the chosen runs to do
    assert summary["seeds"] == [0, 1] and [r["status"] for r in summary["runs"]] == ["not run", "not run"]
    assert [r["status"] for r in summary["baseline"]["runs"]] == ["completed", "running"]
    clear_final(paths, str(tmp_path), keep_baseline=False, seed_params=SEED_RECIPE)  # no baseline asked for now
    assert list(paths.final.iterdir()) == [] and record.read() == {}


def stop_at_first(monkeypatch, owner, name: str) -> None:
    """owner.name raises KeyboardInterrupt (a stop) at its first call, and works as before after."""
    real, calls = getattr(owner, name), []

    def stopped(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, stopped)


def test_a_choice_changed_from_the_seed_recipe_keeps_its_runs_as_the_baseline_even_when_killed_midway(
        tmp_path, monkeypatch):
    from search.resume import clear_final, final_settings

    paths, record = final_dirs(tmp_path, {"seed-0": (SEED_RECIPE, "completed"), "seed-1": (SEED_RECIPE, "running"),
                                          "seed-2": (None, "running")}, [0, 1, 2], baseline=False)
    (paths.final / "summary.json").write_text(json.dumps({**json.loads((paths.final / "summary.json").read_text()),
                                                         "status": "completed"}))  # as a finished study's
    stop_at_first(monkeypatch, Path, "rename")
    with pytest.raises(KeyboardInterrupt):  # stopped before its first move
        clear_final(paths, str(tmp_path), keep_baseline=True, seed_params=SEED_RECIPE)
    assert json.loads((paths.final / "summary.json").read_text())["status"] == "interrupted"  # a stop says --resume
    (paths.final / "seed-0").rename(paths.final / "baseline" / "seed-0")  # and again, after its first move
    assert final_settings(paths) == SEED_RECIPE  # what the resumed study finds: not the new choice's
    clear_final(paths, str(tmp_path), keep_baseline=True, seed_params=SEED_RECIPE)
    assert final_listing(paths) == ["baseline", "baseline/seed-0", "baseline/seed-1", "summary.json"]
    assert final_settings(paths) is None  # the new choice's runs to train
    summary = json.loads((paths.final / "summary.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and [r["status"] for r in summary["runs"]] == ["not run"] * 3
    assert [r["status"] for r in summary["baseline"]["runs"]] == ["completed", "running", "not run"]


def test_a_choice_changed_to_the_seed_recipe_keeps_the_baselines_runs_as_its_final_runs_even_when_killed_midway(
        tmp_path, monkeypatch):
    from search import resume
    from search.resume import final_runs_left, final_settings, promote_baseline
    from search.results import NO_BASELINE

    paths, record = final_dirs(tmp_path, {**{f"seed-{s}": (OTHER, "completed") for s in (0, 1, 2)},
                                          "baseline/seed-0": (SEED_RECIPE, "completed"),
                                          "baseline/seed-1": (SEED_RECIPE, "running"),
                                          "baseline/seed-2": (SEED_RECIPE, "completed")}, [0, 1, 2], baseline=True)
    (paths.final / "seed-3").mkdir()  # a run of the earlier choice that never wrote its config
    record.set("final-tune", "baseline/seed-1", "final-tune/b/checkpoint_000001")
    record.set("final-tune", "seed-2", "final-tune/a/checkpoint_000001")
    # Killed once baseline/seed-0 had moved: seed-0 is the seed recipe's now, seed-1 and seed-2 the earlier choice's.
    shutil.rmtree(paths.final / "seed-0")
    (paths.final / "baseline" / "seed-0").rename(paths.final / "seed-0")
    stop_at_first(monkeypatch, resume.shutil, "rmtree")
    with pytest.raises(KeyboardInterrupt):  # and stopped again, at the first removal
        promote_baseline(paths, str(tmp_path), SEED_RECIPE)
    assert json.loads((paths.final / "summary.json").read_text())["status"] == "interrupted"  # a stop says --resume
    assert promote_baseline(paths, str(tmp_path), SEED_RECIPE) == ["seed-1", "seed-2"]
    assert final_listing(paths) == ["seed-0", "seed-1", "seed-2", "summary.json"]
    assert final_settings(paths) == SEED_RECIPE and record.read() == {}
    assert all(json.loads((paths.final / f"seed-{s}" / "config.json").read_text())["lr"] == 0.1 for s in (0, 1, 2))
    summary = json.loads((paths.final / "summary.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and summary["baseline"] is None and summary["baseline_skipped"] == NO_BASELINE
    assert [r["status"] for r in summary["runs"]] == ["completed", "running", "completed"]
    assert final_runs_left(paths, [0, 1, 2]) == ["seed-1"]  # goes on from its own checkpoint
    assert promote_baseline(paths, str(tmp_path), SEED_RECIPE) == []  # done: nothing more to do
    assert final_listing(paths) == ["seed-0", "seed-1", "seed-2", "summary.json"]
