"""The phases of a study under Ray Tune: the search, re-validation of its top trials, the final runs; and run(),
the study from Ray's start to its report.

Each phase is one Tune run over what the study's record says is left of it (search.resume: how a study resumes).
Ray's start and its cluster's checks are search.cluster's.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from typing import Any

import optuna
import pyarrow.fs
import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from recipe.checkpoint import is_disk_full, write_json
from recipe.config import RecipeError
from search.cluster import gpus_to_use, start_ray
from search.live import FinalView, LiveView, RevalidationView, settings
from search.plan import Plan
from search.record import load_final_summary, load_revalidation
from search.results import (NO_BASELINE, baseline_of, final_exit_status, final_line, final_summary, open_study,
                            revalidation_record, top_trials, write_results, write_trials)
from search.asha import StudyASHA
from search.resume import (CheckpointRecord, KeepLatestCheckpoint, clear_final, extend, final_runs_left,
                           final_settings, promote_baseline, reruns_left, search_left, sweep)
from search.searcher import FailureReasons, StudySearcher, error_of, fail_running, reason_of
from search.stopping import Stop
from search.storage import is_uri, join, whole_files
from search.study import BASELINE, SEARCHED, StudySpec, final_run_name
from search.trainable import DISK_FULL, RUN_DIR, run_recipe


class FinalRunFailed(RuntimeError):
    """The final run crashed more often than its retries allow (not bad input: exit status 1)."""


def resources(spec: StudySpec, gpus: int, runs: int | None = None) -> dict[str, float]:
    """A run's share of the machine. A search trial takes 1/trials_per_gpu of a GPU. The `runs` runs of a phase
    known in advance (re-validation, the final stage) spread over the GPUs first, then share them: 1/k of a GPU
    each, k = min(trials_per_gpu, ceil(runs / gpus)). Ray packs fractional requests onto one GPU before it uses the
    next (ray-project/ray#28679): asked for 1/trials_per_gpu each, 3 runs on 4 GPUs would share GPU 0."""
    share = spec.resources.trials_per_gpu
    if gpus and runs is not None:
        share = max(1, min(share, math.ceil(runs / gpus)))
    return {"cpu": spec.resources.cpus_per_trial, "gpu": 1.0 / share if gpus else 0.0}


def at_once(spec: StudySpec, gpus: int, runs: int) -> int:
    """How many of a phase's `runs` run at a time with resources(spec, gpus, runs): what the GPUs and CPUs take."""
    by_cpu = max(1, int(ray.cluster_resources().get("CPU", 1) // spec.resources.cpus_per_trial))
    by_gpu = int(round(gpus / resources(spec, gpus, runs)["gpu"])) if gpus else runs
    return max(1, min(runs, by_cpu, by_gpu))


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


def storage_filesystem(storage: str) -> pyarrow.fs.FileSystem | None:
    """On a local disk, Tune's files are written whole (search.storage); a URI (s3://...) keeps its own file system."""
    return None if is_uri(storage) else whole_files()


def search(p: Plan, gpus: int, stop: Stop) -> None:
    """The search: the trials the record says are left (search.resume), then new ones up to the study's `trials`."""
    spec, paths = p.spec, p.paths
    experiment, record = join(p.storage, "tune"), CheckpointRecord(paths, p.storage)
    searcher = StudySearcher(spec, optuna.storages.RDBStorage(paths.storage_url),
                             tune_storage=None if is_uri(p.storage) else p.storage)
    study = searcher.study
    unfinished, new = search_left(study, spec.trials)
    if not unfinished and not new:
        sweep(experiment)  # the search had ended: nothing of it will be continued
        record.drop("tune")
        return
    checkpoints = record.uris("tune")
    if unfinished and p.resume:
        print(f"search: {resumed_line(unfinished, checkpoints, study)}, then {new} new")
    trainable = tune.with_resources(
        tune.with_parameters(run_recipe, base=base_config(spec.trial_config(spec.seed_params()).to_dict(), gpus),
                             threads=spec.trial_threads(), checkpoints=checkpoints),
        resources(spec, gpus),
    )
    planned = len(unfinished) + new
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=StudyASHA(spec, study),
            num_samples=planned,
            max_concurrent_trials=concurrency(spec, gpus),
            reuse_actors=True,  # no new worker process (and torch import) per trial
        ),
        run_config=run_config(p, "tune", [FailureReasons(searcher), LiveView(searcher, spec),
                                          KeepLatestCheckpoint(record, "tune", errored=True)]),
    )
    fit(tuner, planned, stop)
    sweep(experiment)
    record.drop("tune")


def fit(tuner: tune.Tuner, planned: int, stop: Stop) -> tune.ResultGrid:
    """A phase's Tune run, each of its `planned` runs ended; a stop meanwhile (Tune's state saved) raises
    KeyboardInterrupt, also one Tune took from elsewhere (SIGUSR1, its own): the phase is not done then."""
    with stop.graceful():
        results = tuner.fit()
    if results.num_terminated + results.num_errors < planned:
        raise KeyboardInterrupt
    return results


def resumed_line(unfinished: list[int], checkpoints: dict[str, str], study: optuna.Study) -> str:
    """What a resumed search does with the trials that had not ended, in words."""
    def trials(numbers: list[int]) -> str:
        return f"trial{'s' * (len(numbers) != 1)} {', '.join(map(str, numbers))}"

    going = [n for n in unfinished if str(n) in checkpoints]
    again = [n for n in unfinished if str(n) not in checkpoints and study.trials[n].intermediate_values]
    waiting = [n for n in unfinished if n not in going and n not in again]
    one = len(going) == 1
    parts = [f"{trials(going)} go{'es' * one} on from {'its' if one else 'their'} last checkpoint{'s' * (not one)}"
             if going else "",
             f"{trials(again)} start{'s' * (len(again) == 1)} again from epoch 0 (no checkpoint recorded)" if again else "",
             f"{trials(waiting)} had not begun" if waiting else ""]
    return "; ".join(part for part in parts if part)


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


class FailedRuns(tune.Callback):
    """The runs of a phase that Tune gave up on (their retries spent), by their `run` (final_run_name), with their
    errors. Tune's own result of a run that failed before it reported anything has no config (Result.config is its
    last report's), so it cannot say which run it was."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.errors[str(trial.config["run"])] = error_of(trial) or "no error recorded"


class RerunLog(tune.Callback):
    """Adds each re-validation run to revalidation.json as it ends, before the study has chosen.

    This record, written as each re-run ends, is what a resumed study takes as ended (resume.reruns_left);
    a re-run tried again (it had failed) replaces its entry.
    """

    def __init__(self, path: str, spec: StudySpec) -> None:
        self.path, self.spec = path, spec

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._add(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._add(trial, error_of(trial))

    def _add(self, trial: Any, error: BaseException | str | None) -> None:
        record = rerun_record(trial.config, trial.last_result, error, self.spec) | {"ray_trial_id": trial.trial_id}
        runs = [r for r in logged_reruns(self.path) if r["trial_id"] != record["trial_id"]]
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
    top = top_trials(study, spec.mode, spec.selection.revalidate_top)
    done = load_revalidation(paths)
    if done is not None and [r["trial_id"] for r in done["trials"]] == [t.number for t in top]:
        return done  # else an extended study has new top trials: they are re-validated too
    if not top:
        return None
    seed = spec.revalidation_seed()
    experiment, log = join(p.storage, "revalidate-tune"), str(paths.revalidation)
    record = CheckpointRecord(paths, p.storage)
    left = reruns_left([t.number for t in top], logged_reruns(log))
    trainable = tune.with_resources(
        tune.with_parameters(run_recipe, base=base_config(spec.trial_config(spec.seed_params()).to_dict(), gpus),
                             threads=spec.trial_threads(), checkpoints=record.uris("revalidate-tune"),
                             settings={t.number: {k: t.params[k] for k in SEARCHED} for t in top}),
        resources(spec, gpus, runs=len(left)),  # spread over the GPUs: a GPU each where there are enough
    )
    print(f"re-validation: the {len(top)} best complete trial{'s' * (len(top) != 1)} ("
          f"{', '.join(str(t.number) for t in top)}) again for {spec.asha.horizon} epochs with seed {seed}; "
          f"the best mean wins")
    if left:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial_id": tune.grid_search(left), "seed": seed},
            tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True),  # the resources decide how many at once
            run_config=run_config(p, "revalidate-tune", [
                RerunLog(log, spec), RevalidationView({t.number: t.value for t in top}, spec.metric, spec.asha.horizon),
                KeepLatestCheckpoint(record, "revalidate-tune", errored=True)]),
        )
        results = fit(tuner, len(left), stop)
    else:
        results = []
    runs = {r["trial_id"]: r for r in logged_reruns(log) if r["trial_id"] in [t.number for t in top]}
    for r in results:  # every one is logged as it ends; Tune's result is the fallback
        if r.config is not None and int(r.config["trial_id"]) not in runs:  # none: failed before it reported
            runs[int(r.config["trial_id"])] = rerun_record(r.config, r.metrics, r.error, spec)
    order = [t.number for t in top]
    chosen = revalidation_record(study, spec, sorted(runs.values(), key=lambda r: order.index(r["trial_id"])))
    write_json(paths.revalidation, chosen)
    sweep(experiment)
    record.drop("revalidate-tune")
    return chosen


def final_plan(p: Plan, gpus: int) -> tuple[list[int], int]:
    """The final stage's seeds (those it began with, where it has) and how many runs it trains at most (the baseline
    beside the chosen settings where the study asks for it)."""
    started = load_final_summary(p.paths)
    seeds = started["seeds"] if started else p.spec.final_seeds(gpus)
    return seeds, len(seeds) * (2 if p.spec.selection.baseline else 1)


def final_stage_line(p: Plan, gpus: int) -> str:
    """The study's first lines: how many final runs there will be, and how many run at once."""
    seeds, runs = final_plan(p, gpus)
    what = f"{plural(len(seeds), 'seed')} of the chosen settings"
    if p.spec.selection.baseline:
        what += (f" and {len(seeds)} of the seed recipe's beside them (the baseline, unless the seed recipe is "
                 f"chosen): {runs} runs")
    return f"final stage: {what}, up to {at_once(p.spec, gpus, runs)} at a time"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def final_runs(p: Plan, gpus: int, best: dict[str, Any], stop: Stop) -> dict[str, Any]:
    """The full recipe with the chosen settings, once per seed, and with a baseline the seed recipe's settings on the
    same seeds, all side by side (spread over the GPUs, then sharing them), under Tune for its retries.

    Each run's directory is final/seed-<s>/ (the baseline's final/baseline/seed-<s>/); final/summary.json sums them
    up (results.final_summary). It is written first as the stage starts, so that a resumed study runs the same seeds
    whatever GPUs it has then.
    """
    spec, paths = p.spec, p.paths
    local = p.address is None
    config = best["final_config"]
    started = load_final_summary(paths)
    seeds = started["seeds"] if started else spec.final_seeds(gpus)
    baseline, skipped = baseline_of(spec, best)
    if not started:
        write_json(paths.final / "summary.json", final_summary(paths, seeds, baseline=baseline, skipped=skipped))
    experiment, record = join(p.storage, "final-tune"), CheckpointRecord(paths, p.storage)
    left = final_runs_left(paths, seeds, baseline)
    runs = {final_run_name(s): {**best["params"], "seed": s} for s in seeds}
    if baseline:
        runs |= {final_run_name(s, baseline=True): {**spec.seed_params(), "seed": s} for s in seeds}

    def where(base: bool) -> str:
        return (str(paths.final_run(seeds[0], base)) if len(seeds) == 1
                else f"{paths.final_run(seeds[0], base).parent}/seed-{{{','.join(map(str, seeds))}}}")

    print(f"final run{'s' * (len(seeds) > 1)}: {config['epochs']} epochs with {settings(best['params'])}"
          f"{f', seeds {seeds[0]} to {seeds[-1]}, side by side' if len(seeds) > 1 else ''} -> {where(False)}")
    if baseline:
        print(f"baseline: the seed recipe's settings, {settings(spec.seed_params())}, on the same "
              f"seed{'s' * (len(seeds) > 1)} beside them -> {where(True)}")
    elif skipped:
        print(f"baseline: none; {skipped}")
    results, failed = [], FailedRuns()
    if left:
        trainable = tune.with_resources(
            tune.with_parameters(run_recipe, base=base_config(config, gpus), threads=spec.trial_threads(),
                                 out_dir=str(paths.final) if local else None, final=True, runs=runs,
                                 checkpoints=record.uris("final-tune")),
            resources(spec, gpus, runs=len(left)),
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"run": tune.grid_search(left)},
            tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True),  # more runs than fit: no new worker each
            # On a cluster a run may land on another node: its files travel with Tune's sync. A run that fails for
            # good keeps its checkpoint: --resume tries it again from there.
            run_config=run_config(p, "final-tune", [FinalView(config["epochs"], len(runs) > 1),
                                                    KeepLatestCheckpoint(record, "final-tune", errored=False),
                                                    failed],
                                  sync_artifacts=not local),
        )
        results = fit(tuner, len(left), stop)
    errors = failed.errors | {r.config["run"]: str(r.error) for r in results if r.error is not None and r.config}
    if not local:
        for r in results:
            if r.error is None:
                target = paths.final / r.config["run"]
                if target.exists():
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)  # final/baseline/ for the baseline's runs
                pyarrow.fs.copy_files(f"{r.path}/{RUN_DIR}", str(target), source_filesystem=r.filesystem)
    summary = final_summary(paths, seeds, failed=set(errors), baseline=baseline, skipped=skipped)
    write_json(paths.final / "summary.json", summary)
    if errors:
        run, error = min(errors.items())
        lines = error.strip().splitlines() or ["no error recorded"]
        raise FinalRunFailed(f"the final run final/{run} failed after {spec.resources.max_failures + 1} attempts: "
                             f"{lines[-1]}")
    sweep(experiment)  # nothing of the final stage will be continued
    return summary


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
        if tune.Tuner.can_restore(join(p.storage, name)):
            raise RecipeError(f"{join(p.storage, name)}: Ray Tune's files of an earlier study {p.spec.name!r} are there; "
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
        grew = p.resume and extend(paths, spec.trials)
        where = f"{gpus} GPU{'s' * (gpus != 1)}, {spec.resources.trials_per_gpu} trials each" if gpus else "CPU only"
        print(f"study {spec.name!r}: {spec.trials} trials, horizon {spec.asha.horizon} epochs, ASHA rungs at "
              f"{spec.rungs()}, {where}, up to {concurrency(spec, gpus)} at a time")
        if p.final:
            print(final_stage_line(p, gpus))
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
        trained = final_settings(paths)  # those of the choice before, where its final runs began
        if baseline_of(spec, best)[1] == NO_BASELINE and (paths.final / BASELINE).is_dir():
            # An extended study chose the seed recipe, whose runs the baseline trained: they are its final runs.
            moved = promote_baseline(paths, p.storage, spec.seed_params())
            runs = f" ({', '.join(moved)})" if moved else ""
            print(f"the choice changed to trial {best['trial_id']}, the seed recipe's settings: the baseline's runs "
                  f"become its final runs{runs}, in place of the earlier choice's: not trained again")
        elif trained is not None and trained != best["params"]:  # an extended study chose other settings
            keep = baseline_of(spec, best)[0]  # the seed recipe's runs are the same whatever the choice
            # They are the baseline's, or the earlier choice's where that was the seed recipe: kept as the baseline.
            kept = keep and ((paths.final / BASELINE).is_dir() or trained == spec.seed_params())
            print(f"the choice changed to trial {best['trial_id']}: the final runs train again with its settings, in "
                  f"place of {paths.final}" + (f" (the seed recipe's runs kept as the baseline's, "
                                               f"{paths.final / BASELINE})" if kept else ""))
            clear_final(paths, p.storage, keep_baseline=keep, seed_params=spec.seed_params())
        elif grew and trained is not None:
            print(f"trial {best['trial_id']} stays the choice: its final runs are not trained again")
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
        return final_exit_status(summary)
    finally:
        with stop.deferred():
            ray.shutdown()
