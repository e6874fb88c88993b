"""How a study resumes: its own record says what is done and what is left, and Tune runs what is left.

The record, written by the driver as things happen (never by Tune, never read back from Tune's state):
- optuna.db: each search trial's settings, its value after every epoch, its state (searcher.StudySearcher);
- revalidation.json: each re-validation run as it ends (tuning.RerunLog), then the choice;
- final/summary.json: the final runs' seeds (written as the final stage starts), and each final run's own
  directory, final/seed-<s>/ (and the baseline's, final/baseline/seed-<s>/), whose summary.json says it ended;
- checkpoints.json: the latest checkpoint of each run still going, by phase, as Tune reports it
  (KeepLatestCheckpoint): a path under the study's storage (a local disk, a cluster's shared one, s3://...).
  A run's entry goes once it has ended, and the file once none is left.

Every phase of a study, new or resumed, is one new Tune run (Tuner.fit) over what the record says is left;
Tune's saved experiment state is neither restored nor edited. On --resume:
1. The search: the Optuna trials that had not ended (RUNNING or WAITING when the driver stopped) go back to
   Optuna's queue and are handed out first, with their numbers and settings, each continuing from its
   recorded checkpoint (a missing or damaged one restarts it from epoch 0, which the trial says); then new
   trials are sampled until the study has its `trials`, by a sampler that sees every trial of the record,
   the running ones included (and is seeded apart from the draws it made before). ASHA's rungs are every
   trial's values at each rung's epoch (search.asha): no trial is judged twice at a rung.
2. Re-validation runs the top trials whose re-run its log does not hold as ended (a failed one again).
3. The final stage runs the runs (chosen settings and baseline, seed by seed) whose directory does not hold an
   ended run.
A new Tune run gives each run the study's max_failures, so a run tried again by --resume has its retries again.
Nothing that ended runs again, nothing is lost, nothing is added.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow.fs
from optuna.trial import TrialState
from ray import tune

from recipe.checkpoint import write_json
from search.record import load_final_summary, note, read_run_record
from search.results import NO_BASELINE, final_summary
from search.storage import fs_path, join
from search.study import BASELINE, FINISHED, SEARCHED, StudyPaths, final_run_name, read_object
from search.trainable import run_key

CHECKPOINTS = "checkpoints.json"  # in results/<study>/
UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)


class CheckpointRecord:
    """checkpoints.json: {phase: {run key: checkpoint path relative to the study's storage}}."""

    def __init__(self, paths: StudyPaths, storage: str) -> None:
        self.path, self.storage = paths.root / CHECKPOINTS, storage
        self.root = fs_path(storage)  # Tune's paths on a URI's file system have no scheme, nor its query

    def read(self) -> dict[str, dict[str, str]]:
        try:
            return read_object(self.path) if self.path.is_file() else {}
        except ValueError as e:  # damaged from outside (it is written whole): the runs go on from epoch 0
            note(f"{self.path}: damaged ({e}); the runs it named start again from epoch 0")
            return {}

    def uris(self, phase: str) -> dict[str, str]:
        """Each run's latest checkpoint, as a path or URI its trainable opens (tune.Checkpoint)."""
        return {key: self.uri(rel) for key, rel in self.read().get(phase, {}).items()}

    def uri(self, relative: str) -> str:
        return join(self.storage, relative)

    def relative(self, path: str) -> str:
        """A path on Tune's storage file system, relative to the study's storage (a moved one is found again)."""
        return path.removeprefix(f"{self.root}/")

    def set(self, phase: str, key: str, relative: str) -> str | None:
        """Record a run's new checkpoint; returns the one it replaces."""
        record = self.read()
        before = record.setdefault(phase, {}).get(key)
        record[phase][key] = relative
        write_json(self.path, record)
        return before

    def drop(self, phase: str, key: str | None = None) -> None:
        """Forget a run's checkpoint (all of a phase's, without a key); the file goes once it holds none."""
        record = self.read()
        runs = record.get(phase, {})
        for k in [key] if key is not None else list(runs):
            runs.pop(k, None)
        record = {name: runs for name, runs in record.items() if runs}
        if record:
            write_json(self.path, record)
        else:
            self.path.unlink(missing_ok=True)


def delete(uri: str) -> None:
    """A checkpoint's directory deleted; one already gone is nothing to free."""
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    with contextlib.suppress(OSError):
        fs.delete_dir(path)


def sweep(experiment: str) -> None:
    """Delete every checkpoint left in a phase's Tune experiment, once nothing of that phase will continue.

    Tune persists a checkpoint before the driver hears of it: one that a stop or a kill kept out of the record
    would stay there.
    """
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment)
    selector = pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.base_name.startswith("checkpoint_") and info.path.rsplit("/", 2)[0] == root.rstrip("/"):
            with contextlib.suppress(OSError):
                fs.delete_dir(info.path)


class KeepLatestCheckpoint(tune.Callback):
    """Records each run's checkpoint as Tune reports it, and deletes what no run will continue from.

    A run that ended (and, with `errored`, one that failed for good) is never continued: its checkpoint
    (170 MB at full width) goes, and so does one an earlier Tune run of the same run left.
    """

    def __init__(self, record: CheckpointRecord, phase: str, errored: bool) -> None:
        self.record, self.phase, self.errored = record, phase, errored

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        now = self.record.relative(checkpoint.path)
        before = self.record.set(self.phase, run_key(trial.config), now)
        if before and before.rsplit("/", 1)[0] != now.rsplit("/", 1)[0]:
            delete(self.record.uri(before))  # an earlier Tune run's (Tune deletes its own older ones itself)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.errored:
            self._ended(trial)

    def _ended(self, trial: Any) -> None:
        key = run_key(trial.config)
        recorded = self.record.read().get(self.phase, {}).get(key)
        if recorded:
            delete(self.record.uri(recorded))
        self.record.drop(self.phase, key)


def extend(paths: StudyPaths, trials: int) -> bool:
    """spec.json holds a resumed study's `trials` (--resume --trials N); True where that grew the study.

    trials.csv, written when the search ends, goes until it has ended again, and best.json until the study has
    chosen again: until then it is not finished (a stop says --resume), whatever its final runs.
    """
    record = read_object(paths.spec)
    if record.get("trials") == trials:
        return False
    write_json(paths.spec, {**record, "trials": trials})
    paths.trials_csv.unlink(missing_ok=True)
    paths.best.unlink(missing_ok=True)
    return True


def final_settings(paths: StudyPaths) -> dict[str, Any] | None:
    """The searched settings the final runs on disk were trained with (their config.json); None where none has one."""
    for run in sorted(paths.final.glob("seed-*")):
        settings = settings_of(run)
        if settings is not None:  # else not written yet, or damaged: the run's own resume deals with it
            return settings
    return None


def search_left(study: optuna.Study, trials: int) -> tuple[list[int], int]:
    """The trials a search continues (by number) and how many it samples anew to have `trials` in all.

    Unfinished ones go back to Optuna's queue: study.ask() hands them out first, lowest number first, with
    their settings (Optuna keeps a trial's suggested values) and their values so far.
    """
    every = study.get_trials(deepcopy=False)
    unfinished = [t for t in every if t.state in UNFINISHED]
    for t in unfinished:
        if t.state == TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, TrialState.WAITING)  # no public API for it
    return [t.number for t in unfinished], max(0, trials - len(every))


def sampler_seed(seed: int, trials: int) -> int:
    """The TPE sampler's seed when a study holds `trials`: the study's at the start, another after.

    A sampler seeded as at the start would draw again the settings it drew then (its random start-up
    trials first): a newly sampled trial would repeat a trial of the record. numpy's SeedSequence mixes the two
    (a plain seed + 1 makes draws that are far from typical: RandomState(1)'s third is 0.0001).
    """
    return seed if trials == 0 else int(np.random.SeedSequence([seed, trials]).generate_state(1)[0])


def reruns_left(top: list[int], logged: list[dict[str, Any]]) -> list[int]:
    """The top trials whose re-run revalidation.json does not hold as ended (a failed one runs again)."""
    ended = {r["trial_id"] for r in logged if r["status"] != "failed"}
    return [n for n in top if n not in ended]


def final_runs_left(paths: StudyPaths, seeds: list[int], baseline: bool = False) -> list[str]:
    """The final runs (final_run_name: the chosen settings' seed by seed, then the baseline's) whose run directory
    holds no run that ended for good."""
    names = [final_run_name(s) for s in seeds] + ([final_run_name(s, baseline=True) for s in seeds] if baseline else [])
    return [name for name in names if not ended((paths.final / name) / "summary.json")]


def ended(summary: Path) -> bool:
    return summary.is_file() and read_run_record(summary).get("status") in FINISHED


def clear_final(paths: StudyPaths, storage: str, keep_baseline: bool, seed_params: dict[str, float]) -> None:
    """An earlier choice's final runs gone, with their recorded checkpoints, as the choice changed (an extended study).

    With `keep_baseline` the seed recipe's runs stay, ended or midway, with their seeds (final/summary.json keeps
    them): the new choice's baseline trains the same settings on the same seeds. They are final/baseline/seed-<s>/,
    or final/seed-<s>/ where the seed recipe was the earlier choice: those move to final/baseline/.
    Each step is a removal or a rename; killed midway, the study resumed does the rest (a final/seed-<s>/ of other
    settings than the new choice's is found again), and meanwhile final/summary.json says the stage is unfinished.
    """
    started = unfinished(paths) if keep_baseline else None  # the seeds the kept runs trained with stay
    record = CheckpointRecord(paths, storage)
    for key in list(record.read().get("final-tune", {})):
        if not (keep_baseline and key.startswith(f"{BASELINE}/")):
            record.drop("final-tune", key)
    for child in list(paths.final.iterdir()) if paths.final.is_dir() else []:
        if keep_baseline and child.name in (BASELINE, "summary.json"):
            continue
        if keep_baseline and child.name.startswith("seed-") and settings_of(child) == seed_params:
            target = paths.final / BASELINE / child.name
            if not target.exists():
                target.parent.mkdir(exist_ok=True)
                child.rename(target)
                continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    if started is not None:
        write_json(paths.final / "summary.json", final_summary(paths, started["seeds"], baseline=True))


def unfinished(paths: StudyPaths) -> dict[str, Any] | None:
    """final/summary.json, now saying "interrupted" (None where there is none): while final runs are moved or removed,
    a stop finds the final stage unfinished and says --resume, which does the rest."""
    started = load_final_summary(paths)
    if started is not None:
        write_json(paths.final / "summary.json", {**started, "status": "interrupted"})
    return started


def settings_of(run: Path) -> dict[str, Any] | None:
    """The searched settings a final run directory trained (its config.json); None where it has none to read."""
    try:
        config = read_object(run / "config.json")
    except (OSError, ValueError):  # not written yet (no epoch trained), or damaged
        return None
    return {k: config.get(k) for k in SEARCHED}


def promote_baseline(paths: StudyPaths, storage: str, seed_params: dict[str, float]) -> list[str]:
    """The choice changed to the seed recipe (an extended study): the baseline's runs, which trained its settings
    with the final runs' config on the same seeds, become the final runs, ended or midway, and the earlier choice's
    go with every recorded checkpoint. Returns the runs moved (final_run_name), none where final/baseline/ is not there.

    Each step is a removal or a rename, and the study looks for final/baseline/ again when resumed, so one killed
    midway does the rest then; meanwhile final/summary.json says the stage is unfinished. A run midway goes on from
    its own directory's last checkpoint; on a cluster a baseline run midway (its files on Tune's storage, whose
    record is gone) starts again.
    """
    base = paths.final / BASELINE
    if not base.is_dir():
        return []
    started = unfinished(paths)  # its seeds stay, rewritten whole below
    CheckpointRecord(paths, storage).drop("final-tune")
    for run in sorted(paths.final.glob("seed-*")):
        if settings_of(run) != seed_params:  # the earlier choice's (a run moved here by an earlier attempt stays)
            shutil.rmtree(run)
    moved = []
    for run in sorted(base.glob("seed-*")):
        if not (paths.final / run.name).exists():
            run.rename(paths.final / run.name)
            moved.append(run.name)
    shutil.rmtree(base)
    if started is not None:
        write_json(paths.final / "summary.json", final_summary(paths, started["seeds"], skipped=NO_BASELINE))
    return moved
