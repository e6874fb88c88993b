"""The Ray side of a study: start or join Ray, search with Tune, run the final run under Tune."""
from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from typing import Any, Callable

import optuna
import pyarrow.fs
import ray
from ray import tune
from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
from ray.tune.experiment import Trial
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler

from recipe.checkpoint import is_disk_full, write_json
from recipe.config import RecipeError
from search.live import FinalView, LiveView, RevalidationView, settings
from search.cluster import gpus_to_use, start_ray
from search.plan import Plan
from search.record import load_revalidation
from search.results import (final_line, final_summary, open_study, revalidation_record,
                            top_trials, write_results, write_trials)
from search.searcher import FailureReasons, StudySearcher, error_of, fail_running, reason_of
from search.stopping import Stop
from search.storage import whole_files
from search.study import SEARCHED, StudySpec
from search.trainable import DISK_FULL, RUN_DIR, run_recipe



class DropEndedCheckpoints(tune.Callback):
    """Deletes a trial's checkpoint once the trial has ended for good.

    Tune keeps each trial's latest checkpoint (about 170 MB at full width: the weights and the
    optimizer's momentum). A study never continues a trial that completed or that ASHA stopped, nor,
    with `errored` set, one that failed (a resumed search restarts none of those), so their
    checkpoints would only fill the disk: ~7 GB for the default 40-trial study. Running trials keep
    theirs, so an interrupted study continues from them. The final run keeps its checkpoint when it
    fails: --resume retries it from there.
    """

    def __init__(self, errored: bool) -> None:
        self.errored = errored

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        drop_checkpoint(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.errored:
            drop_checkpoint(trial)


def drop_checkpoint(trial: Any) -> None:
    checkpoint = trial.checkpoint  # the latest; with num_to_keep=1 the only one
    if checkpoint is None:
        return
    try:
        checkpoint.filesystem.delete_dir(checkpoint.path)
    except OSError:  # already gone: nothing to free
        pass


def drop_every_checkpoint(result: Any) -> None:
    """Deletes every checkpoint left in an ended trial's directory, not only the one Tune names as its latest.

    A final run stopped (SIGTERM), resumed and ended has once left an older checkpoint beside the one Tune
    named (in the fault tests): Tune's record of a trial's checkpoints across a stop and a restore is not one
    to rely on for freeing the disk, and nothing of a trial that ended well is ever resumed.
    """
    fs, path = result.filesystem, result.path
    try:
        found = fs.get_file_info(pyarrow.fs.FileSelector(path))
    except OSError:  # the trial's directory is gone: nothing to free
        return
    for info in found:
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            try:
                fs.delete_dir(info.path)
            except OSError:
                pass


class StudyASHA(ASHAScheduler):
    """ASHA that judges a trial once at each rung, across a study's interruptions.

    Tune does not save ASHA's rungs with a study's state: after a resume, ASHA has seen none of the
    epochs before. Left as it is, it would judge a resumed trial again at the rungs it had passed (or it
    would not have gone on), and a trial that runs epochs again (restarted from epoch 0, its checkpoint
    damaged or gone; or resumed from the checkpoint before the last epoch Tune logged) at each of those
    epochs afresh: it could stop at epoch 1 a trial that had gone on to epoch 2, Optuna holding both.
    Here an epoch a trial has run before is not judged again (as Optuna keeps the first value of each
    epoch), and the rungs a resumed trial had reached count as passed: it is recorded there without a
    value (NaN, which ASHA's cutoffs, numpy's nanpercentile, leave out). Where it had got to comes from
    Tune's last result of the trial, which Tune saves with the study's state.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._highest: dict[str, int] = {}  # per trial, the highest epoch seen
        self._replaying: set[str] = set()  # trials whose last result was an epoch seen before

    def _seen_before(self, trial: Any, epoch: int) -> bool:
        if trial.trial_id not in self._highest:
            before = int((trial.last_result or {}).get(self._time_attr) or 0)
            self._highest[trial.trial_id] = before
            if before and trial.trial_id in self._trial_info:
                for milestone, recorded in self._trial_info[trial.trial_id]._rungs:
                    if milestone <= before:
                        recorded.setdefault(trial.trial_id, float("nan"))
        if epoch <= self._highest[trial.trial_id]:
            return True
        self._highest[trial.trial_id] = epoch
        return False

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        epoch = result.get(self._time_attr)
        if epoch is not None and self._metric in result and self._seen_before(trial, epoch):
            self._replaying.add(trial.trial_id)
            return self.CONTINUE
        self._replaying.discard(trial.trial_id)
        with warnings.catch_warnings():  # a rung with none but passed-before trials: its cutoff is NaN, no stop
            warnings.simplefilter("ignore", RuntimeWarning)
            return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if trial.trial_id in self._replaying:
            self._trial_info.pop(trial.trial_id, None)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                super().on_trial_complete(tune_controller, trial, result)
        self._forget(trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_remove(tune_controller, trial)
        self._forget(trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_error(tune_controller, trial)
        self._forget(trial)

    def _forget(self, trial: Any) -> None:
        self._highest.pop(trial.trial_id, None)
        self._replaying.discard(trial.trial_id)


class FinalRunFailed(RuntimeError):
    """The final run crashed more often than its retries allow (not bad input: exit status 1)."""


def resources(spec: StudySpec, gpus: int, final: bool = False) -> dict[str, float]:
    gpu = (1.0 if final else 1.0 / spec.resources.trials_per_gpu) if gpus else 0.0
    return {"cpu": spec.resources.cpus_per_trial, "gpu": gpu}


def concurrency(spec: StudySpec, gpus: int) -> int:
    """Trials at a time: what the GPUs take, and no more than the CPUs can serve.

    A trial Tune starts but cannot place would still hold a RUNNING Optuna trial, and TPE
    would sample further ahead of its results than it needs to.
    """
    by_cpu = max(1, int(ray.cluster_resources().get("CPU", 1) // spec.resources.cpus_per_trial))
    return min(gpus * spec.resources.trials_per_gpu, by_cpu) if gpus else by_cpu


def base_config(config_dict: dict[str, Any], gpus: int) -> dict[str, Any]:
    """A run's recipe without the searched settings (the trainable adds them), on the right device."""
    return {k: v for k, v in config_dict.items() if k not in SEARCHED} | {"device": "cuda" if gpus else "cpu"}


def restorable(experiment: str) -> bool:
    """Whether Tune saved a state of this experiment to resume from.

    A stop in the moment between a Tuner's making (tuner.pkl) and Tune's first save of its state leaves
    none: no trial of that phase had started, and a resumed study starts the phase afresh. A state set
    aside as damaged counts as one (newest_saved_state says so).
    """
    if not tune.Tuner.can_restore(experiment):
        return False
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment)
    return any(info.base_name.startswith("experiment_state-")
               for info in fs.get_file_info(pyarrow.fs.FileSelector(root)))


def newest_saved_state(experiment: str) -> tuple[pyarrow.fs.FileSystem, str, dict[str, Any]]:
    """(file system, path, contents) of Tune's newest saved experiment state; a session's cut-short state set aside."""
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment)
    while True:
        newest = _find_newest_experiment_checkpoint(root, fs=fs)
        if newest is None:
            raise RecipeError(f"{experiment}: Ray Tune's saved state of this study is damaged; remove "
                              f"{experiment.rsplit('/', 1)[0]} to start over")
        try:
            with fs.open_input_stream(newest) as f:
                return fs, newest, json.loads(f.readall())
        except ValueError:  # cut short: the driver died while Tune copied it
            set_aside_session(fs, root, newest)


def settle_ended_trials(experiment: str, study: optuna.Study) -> list[str]:
    """Mark TERMINATED, in Tune's saved state, the trials Optuna holds as ended; returns their Tune ids.

    Tune saves its experiment state every few seconds; a driver killed after a trial ended but before
    the next save leaves that trial RUNNING there, with its checkpoint already deleted
    (DropEndedCheckpoints). Resumed as it is, Tune would run the trial again, failing to restore that
    checkpoint until its retries ran out. Optuna's record (written as the trial ends) says it ended.
    """
    ended = {t.user_attrs.get("ray_trial_id") for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    return settle_trials(experiment, ended)


def give_failed_trials_their_retries(experiment: str) -> list[str]:
    """Count no failures, in Tune's saved state, for the trials that failed for good; returns their Tune ids.

    Tune keeps a trial's failure count across a restore: a failed trial resumed with resume_errored would
    have no retry left, and its first crash would end it again.
    """
    fs, newest, state = newest_saved_state(experiment)
    reset = []
    for entry in state["trial_data"]:
        trial, metadata = json.loads(entry[0]), json.loads(entry[1])
        if trial["status"] == Trial.ERROR and (metadata.get("num_failures") or metadata.get("num_failures_after_restore")):
            metadata["num_failures"] = metadata["num_failures_after_restore"] = 0
            entry[1] = json.dumps(metadata)
            reset.append(trial["trial_id"])
    if reset:
        save_state(fs, newest, state)
    return reset


def save_state(fs: pyarrow.fs.FileSystem, path: str, state: dict[str, Any]) -> None:
    """Tune's saved experiment state, rewritten whole (a temporary file renamed into place)."""
    tmp = f"{path}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(state).encode())
    fs.move(tmp, path)


def settle_trials(experiment: str, ended: set[str]) -> list[str]:
    """Mark TERMINATED, in Tune's newest saved state, the trials with these Tune ids; returns those it changed."""
    fs, newest, state = newest_saved_state(experiment)
    if not ended:
        return []
    settled = []
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        if trial["trial_id"] in ended and trial["status"] not in (Trial.TERMINATED, Trial.ERROR):
            trial["status"] = Trial.TERMINATED
            entry[0] = json.dumps(trial)
            settled.append(trial["trial_id"])
    if settled:
        save_state(fs, newest, state)
    return settled


def mark_lost_checkpoints(experiment: str, errored: bool = False) -> list[str]:
    """Make an empty directory for each lost checkpoint that Tune would resume an unfinished trial from; returns them.

    Tune keeps one checkpoint per trial (num_to_keep=1): registering a trial's epoch N+1 deletes
    epoch N's at once, while the experiment state that names epoch N's is saved only every ten
    seconds or more. A driver killed in between leaves a saved state naming a deleted checkpoint,
    and Tune would fail to restore that trial ("does not exist on storage anymore") until its
    retries ran out: a FAIL. Found empty, the checkpoint is "not there" to the trial's run, which
    restarts from epoch 0 and says so (trainable.run_recipe), as for a damaged one.
    """
    from ray.tune.trainable.metadata import _TrainingRunMetadata  # Tune's own reader of the saved metadata

    fs, root = pyarrow.fs.FileSystem.from_uri(experiment)
    made = []
    for trial_json, metadata_json in newest_saved_state(experiment)[2]["trial_data"]:
        trial = json.loads(trial_json)
        ended = (Trial.TERMINATED,) if errored else (Trial.TERMINATED, Trial.ERROR)  # errored: resumed too
        if trial["status"] in ended or not trial.get("relative_logdir"):
            continue
        manager = _TrainingRunMetadata.from_json_state(metadata_json).checkpoint_manager
        latest = manager.latest_checkpoint_result if manager is not None else None
        if latest is None or latest.checkpoint is None:
            continue
        # Where the trial's directory is now (a moved results folder is found again by Tune too).
        path = f"{root}/{trial['relative_logdir']}/{latest.checkpoint.path.rstrip('/').rsplit('/', 1)[-1]}"
        if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
            fs.create_dir(path)
            made.append(path)
    return made


def set_aside_session(fs: pyarrow.fs.FileSystem, root: str, state_file: str) -> None:
    """Rename (*.damaged) every file one driver session of Tune saved, so that Tune resumes from the session before.

    Tune would otherwise fail to read the state and silently start the experiment over, sampling
    every trial again beside the ones Optuna holds. The searcher squares the older state with Optuna.
    """
    session = state_file.rsplit("experiment_state-", 1)[1].removesuffix(".json")
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root)):
        if info.base_name.endswith((f"-{session}.json", f"-{session}.pkl")):
            fs.move(info.path, f"{info.path}.damaged")


def storage_filesystem(storage: str) -> pyarrow.fs.FileSystem | None:
    """On a local disk, Tune's files are written whole (search.storage); a URI (s3://...) keeps its own file system."""
    return None if "://" in storage else whole_files()


def search(p: Plan, gpus: int, stop: Stop) -> None:
    spec, paths = p.spec, p.paths
    experiment = f"{p.storage}/tune"
    trainable = tune.with_resources(
        tune.with_parameters(run_recipe, base=base_config(spec.trial_config(spec.seed_params()).to_dict(), gpus),
                             threads=spec.trial_threads()),
        resources(spec, gpus),
    )
    if p.resume and restorable(experiment):
        settle_ended_trials(experiment, open_study(paths, spec))
        mark_lost_checkpoints(experiment)
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   storage_filesystem=storage_filesystem(p.storage))
    elif p.resume and paths.optuna_db.exists() and open_study(paths, spec).trials:
        raise RecipeError(f"{experiment}: no Ray Tune state of this study there (was it started with another "
                          f"--storage?); resume with the same --storage, or remove {paths.root} to start over")
    else:
        searcher = StudySearcher(spec, optuna.storages.RDBStorage(paths.storage_url))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=StudyASHA(time_attr="epoch", metric=spec.metric, mode=spec.mode, max_t=spec.asha.horizon,
                                        grace_period=spec.asha.grace_period,
                                        reduction_factor=spec.asha.reduction_factor),
                num_samples=spec.trials,
                max_concurrent_trials=concurrency(spec, gpus),
                reuse_actors=True,  # no new worker process (and torch import) per trial
            ),
            run_config=run_config(p, "tune", [FailureReasons(searcher), LiveView(searcher, spec),
                                              DropEndedCheckpoints(errored=True)]),
        )
    with stop.graceful():
        results = tuner.fit()
    if results.num_terminated + results.num_errors < spec.trials:
        raise KeyboardInterrupt  # Tune stopped early on a signal from elsewhere (SIGUSR1, its own), its state saved


def restore_or_new(experiment: str, p: Plan, trainable: Any, errored: bool, new: Callable[[], tune.Tuner]) -> tune.Tuner:
    """A later phase of a resumed study (re-validation, final runs) as Tune left it, or a new one.

    `errored`: trials that failed for good are tried again (their checkpoints were kept or are marked lost).
    """
    if p.resume and restorable(experiment):
        mark_lost_checkpoints(experiment, errored=errored)
        if errored:
            give_failed_trials_their_retries(experiment)
        return tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=errored,
                                  storage_filesystem=storage_filesystem(p.storage))
    return new()


def run_config(p: Plan, name: str, callbacks: list, sync_artifacts: bool = False) -> tune.RunConfig:
    """One phase of a study under Tune (the search, re-validation, the final runs): its storage, retries, checkpoints.

    Tune's JSON and CSV records of each trial (result.json, progress.csv), not its TensorBoard one: tensorboardX
    imports torch, seconds of CPU for a driver that trains nothing (the study's own record is optuna.db, its
    report and each run's metrics.csv). TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0 brings it back.
    """
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # read by Tuner.fit, in this process
    return tune.RunConfig(
        name=name,
        storage_path=p.storage,
        storage_filesystem=storage_filesystem(p.storage),
        failure_config=tune.FailureConfig(max_failures=p.spec.resources.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        sync_config=tune.SyncConfig(sync_artifacts=sync_artifacts),
        callbacks=[*callbacks, JsonLoggerCallback(), CSVLoggerCallback()],
        verbose=0,
    )


def rerun_record(config: dict[str, Any], metrics: dict[str, Any] | None, error: BaseException | str | None,
                 spec: StudySpec) -> dict[str, Any]:
    """One re-validation run as revalidation.json keeps it: its trial, seed, status, value, epochs and time."""
    m = metrics or {}
    epochs = int(m.get("epoch") or 0)
    value, reason = None, None
    if error is not None:
        status, reason = "failed", reason_of(error, spec.resources.max_failures + 1)
    elif m.get("status") == DISK_FULL:
        status, reason = "failed", m.get("reason")
    elif m.get("status") == "diverged":
        status, value, reason = "diverged", float("nan"), f"the training loss was not finite in epoch {epochs}"
    elif epochs >= spec.asha.horizon:
        status, value = "completed", float(m[spec.metric])
    else:
        status, reason = "failed", f"ended at epoch {epochs} of {spec.asha.horizon}"
    return {"trial_id": int(config["trial_id"]), "seed": int(config["seed"]), "status": status, "value": value,
            "epochs": epochs, "time_s": m.get("time_total_s"), "ended": m.get("timestamp"), "reason": reason,
            "ray_trial_id": m.get("trial_id")}


class RerunLog(tune.Callback):
    """Adds each re-validation run to revalidation.json as it ends, before the study has chosen.

    Tune saves its experiment state only every few seconds: a driver killed after a re-run ended but
    before the next save would have Tune run it again from epoch 0 (its checkpoint dropped at its end).
    This record, written as each re-run ends, is what a resumed study takes as ended (settle_trials).
    """

    def __init__(self, path: str, spec: StudySpec) -> None:
        self.path, self.spec = path, spec

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._add(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._add(trial, error_of(trial))

    def _add(self, trial: Any, error: BaseException | str | None) -> None:
        record = rerun_record(trial.config, trial.last_result, error, self.spec) | {"ray_trial_id": trial.trial_id}
        runs = [r for r in logged_reruns(self.path) if r["ray_trial_id"] != trial.trial_id]
        write_json(self.path, {"runs": [*runs, record]})


def logged_reruns(path: str) -> list[dict[str, Any]]:
    """The re-validation runs revalidation.json holds (ended ones, while re-validation runs; all of them after)."""
    try:
        with open(path) as f:
            return json.load(f)["runs"]
    except FileNotFoundError:
        return []


def revalidate(p: Plan, gpus: int, study: optuna.Study, stop: Stop) -> dict[str, Any] | None:
    """Train the study's top complete trials again at the horizon with another seed, side by side; record the choice.

    Each re-run is a Tune trial of its own (with the search's resources, retries and checkpoints), in
    <storage>/revalidate-tune, so an interrupted re-validation resumes like the search: ended re-runs
    are not run again. Returns revalidation.json's record, or None where there is nothing to re-validate.
    """
    spec, paths = p.spec, p.paths
    if spec.selection.revalidate_top == 0:
        return None
    done = load_revalidation(paths)
    if done is not None:
        return done
    top = top_trials(study, spec.mode, spec.selection.revalidate_top)
    if not top:
        return None
    seed = spec.revalidation_seed()
    trainable = tune.with_resources(
        tune.with_parameters(run_recipe, base=base_config(spec.trial_config(spec.seed_params()).to_dict(), gpus),
                             threads=spec.trial_threads(),
                             settings={t.number: {k: t.params[k] for k in SEARCHED} for t in top}),
        resources(spec, gpus),
    )
    print(f"re-validation: the {len(top)} best complete trial{'s' * (len(top) != 1)} ("
          f"{', '.join(str(t.number) for t in top)}) again for {spec.asha.horizon} epochs with seed {seed}; "
          f"the best mean wins")
    experiment, log = f"{p.storage}/revalidate-tune", str(paths.revalidation)
    if p.resume and restorable(experiment):
        # Re-runs that ended with a result are not run again; one that failed is tried again.
        settle_trials(experiment, {r["ray_trial_id"] for r in logged_reruns(log) if r["status"] != "failed"})
    tuner = restore_or_new(experiment, p, trainable, errored=True, new=lambda: tune.Tuner(
        trainable,
        param_space={"trial_id": tune.grid_search([t.number for t in top]), "seed": seed},
        # No max_concurrent_trials: the resources alone decide how many run at once. With a limit Tune makes a
        # re-run only once one ends, and a study killed after a re-run ended but before Tune's searcher state said
        # so would resume to a searcher that waits, forever, for that re-run to end.
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True),
        run_config=run_config(p, "revalidate-tune", [
            RerunLog(log, spec), RevalidationView({t.number: t.value for t in top}, spec.metric, spec.asha.horizon),
            DropEndedCheckpoints(errored=True)]),
    ))
    with stop.graceful():  # a stop: KeyboardInterrupt, Tune's state saved
        results = tuner.fit()
    runs = {r["ray_trial_id"]: r for r in logged_reruns(log)}
    for r in results:  # every one is logged as it ends; Tune's record is the fallback
        trial_id = (r.metrics or {}).get("trial_id")
        if trial_id not in runs:
            runs[trial_id] = rerun_record(r.config, r.metrics, r.error, spec)
    order = [t.number for t in top]
    record = revalidation_record(study, spec, sorted(runs.values(), key=lambda r: order.index(r["trial_id"])))
    write_json(paths.revalidation, record)
    return record


def final_runs(p: Plan, gpus: int, best: dict[str, Any], stop: Stop) -> dict[str, Any]:
    """The full recipe with the chosen settings, once per seed, side by side (a GPU each), under Tune for its retries.

    Each run's directory is final/seed-<s>/; final/summary.json sums them up (results.final_summary).
    """
    spec, paths = p.spec, p.paths
    local = p.address is None
    config = best["final_config"]
    trainable = tune.with_resources(
        tune.with_parameters(run_recipe, base=base_config(config, gpus), threads=spec.trial_threads(),
                             out_dir=str(paths.final) if local else None, final=True),
        resources(spec, gpus, final=True),
    )
    experiment = f"{p.storage}/final-tune"
    seeds = (saved_seeds(experiment, spec.seed) if p.resume else None) or spec.final_seeds(gpus)
    tuner = restore_or_new(experiment, p, trainable, errored=True, new=lambda: tune.Tuner(
        trainable,
        param_space={**best["params"], "seed": tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True),  # more seeds than GPUs: no new worker each
        # On a cluster a run may land on another node: its files travel with Tune's sync.
        run_config=run_config(p, "final-tune", [FinalView(config["epochs"], len(seeds) > 1),
                                                DropEndedCheckpoints(errored=False)], sync_artifacts=not local),
    ))
    where = paths.final_run(seeds[0]) if len(seeds) == 1 else f"{paths.final}/seed-{{{','.join(map(str, seeds))}}}"
    print(f"final run{'s' * (len(seeds) > 1)}: {config['epochs']} epochs with {settings(best['params'])}"
          f"{f', seeds {seeds[0]} to {seeds[-1]}, side by side' if len(seeds) > 1 else ''} -> {where}")
    with stop.graceful():  # a stop: KeyboardInterrupt, Tune's state saved
        results = tuner.fit()
    errors = [r for r in results if r.error is not None]

    def seed_of(result: Any) -> int:  # a final run saved before final runs had seeds ran with the study's
        return int(result.config.get("seed", spec.seed))

    if not local:
        for r in results:
            if r.error is None:
                target = paths.final_run(seed_of(r))
                if target.exists():
                    shutil.rmtree(target)
                pyarrow.fs.copy_files(f"{r.path}/{RUN_DIR}", str(target), source_filesystem=r.filesystem)
    for r in results:
        if r.error is None:  # ended for good: nothing of it will be resumed (a failed one keeps its checkpoint)
            drop_every_checkpoint(r)
    summary = final_summary(paths, seeds, failed={seed_of(r) for r in errors})
    write_json(paths.final / "summary.json", summary)
    if errors:
        e = errors[0]
        raise FinalRunFailed(f"the final run with seed {seed_of(e)} failed after "
                             f"{spec.resources.max_failures + 1} attempts: {str(e.error).strip().splitlines()[-1]}")
    return summary


def saved_seeds(experiment: str, study_seed: int) -> list[int] | None:
    """The seeds of a final-runs experiment Tune saved (a resumed study keeps them, whatever GPUs it has now).

    A final run saved before final runs had seeds has none in its config: it runs with the study's seed.
    """
    if not restorable(experiment):
        return None
    trials = [json.loads(entry[0]) for entry in newest_saved_state(experiment)[2]["trial_data"]]
    return sorted(int(t["config"].get("seed", study_seed)) for t in trials) or None


def revalidation_line(record: dict[str, Any], spec: StudySpec) -> str:
    """What re-validation decided, in one line."""
    chosen, single = record["chosen"], record["best_single"]
    if not record["changed"]:
        return f"re-validation: trial {chosen} stays the best, by its mean over {len(record['trials'][0]['values'])} runs"
    means = {r["trial_id"]: r["mean_value"] for r in record["trials"]}
    return (f"re-validation: trial {chosen} (mean {spec.metric} {means[chosen]:.4f}) replaces trial {single} "
            f"(mean {means[single]:.4f}), the best single value of the search")


def write_report(p: Plan) -> None:
    """The report, rewritten at each step of the study; one that cannot be written is a line, never the study's end."""
    from search.report import write_report as write

    try:
        print(f"report: {write(p.paths)}")
    except Exception as e:
        if is_disk_full(e):
            raise  # the study stops, its state saved
        print(f"report: not written ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
              f"the study goes on; python -m search.report writes it later", file=sys.stderr)


PHASES = ("tune", "revalidate-tune", "final-tune")  # Ray Tune's experiments of a study, under its storage


def check_no_earlier_experiments(p: Plan) -> None:
    """A new study refuses Tune files an earlier study of the same name left on its storage.

    Resumed later, this study would take up that study's re-validation runs or final runs as its own.
    Removing a study's results directory leaves them where --storage is elsewhere.
    """
    for name in PHASES:
        if tune.Tuner.can_restore(f"{p.storage}/{name}"):
            raise RecipeError(f"{p.storage}/{name}: Ray Tune's files of an earlier study {p.spec.name!r} are there; "
                              f"remove {p.storage} to start this study over, or pass another --storage")


def run(p: Plan, stop: Stop) -> int:
    """The study, from Ray's start to its report; a stop (Ctrl-C, SIGTERM) at any point is a KeyboardInterrupt.

    Ray is shut down however the study ends, also on a second stop meanwhile: stopped halfway, its processes
    would outlive the driver.
    """
    spec, paths = p.spec, p.paths
    if not p.resume:
        check_no_earlier_experiments(p)
    try:
        start_ray(p, stop)
        gpus = gpus_to_use(spec)
        paths.root.mkdir(parents=True, exist_ok=True)
        if not p.resume:
            write_json(paths.spec, p.spec_record())
        where = f"{gpus} GPU{'s' * (gpus != 1)}, {spec.resources.trials_per_gpu} trials each" if gpus else "CPU only"
        print(f"study {spec.name!r}: {spec.trials} trials, horizon {spec.asha.horizon} epochs, ASHA rungs at "
              f"{spec.rungs()}, {where}, up to {concurrency(spec, gpus)} at a time")
        print(f"results: {paths.root}   live: optuna-dashboard {paths.storage_url}")
        search(p, gpus, stop)
        study = open_study(paths, spec)
        fail_running(study, "the search ended without a result for this trial")
        write_trials(paths, spec, study)  # the search's record; until best.json, a resume continues re-validation
        revalidation = revalidate(p, gpus, study, stop)
        best = write_results(paths, spec, study, revalidation)
        print(f"trials: {paths.trials_csv}")
        if best is None:
            print("no trial ran the whole horizon (all stopped or failed): no best trial, no final run", file=sys.stderr)
            write_report(p)
            return 1
        if revalidation is not None:
            print(revalidation_line(revalidation, spec))
        mean = f" (mean {best['mean_value']:.4f} over {len(best['values'])} runs)" if best["revalidated"] else ""
        print(f"best: trial {best['trial_id']}, {spec.metric} {best['value']:.4f}{mean}, {settings(best['params'])} "
              f"-> {paths.best}")
        write_report(p)
        if not p.final:
            return 0
        try:
            summary = final_runs(p, gpus, best, stop)
        except FinalRunFailed as e:
            print(f"error: {e}; --resume tries again", file=sys.stderr)
            write_report(p)
            return 1
        write_report(p)
        print(final_line(summary))
        return 0 if summary["status"] == "completed" else 1
    finally:
        with stop.deferred():
            ray.shutdown()
