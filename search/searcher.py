"""The study's searcher: Ray Tune's trials as Optuna trials, with the bookkeeping an early-stopped search needs.

A Tune Searcher over Optuna's ask-and-tell interface. Ray's OptunaSearch tells Optuna that a trial ASHA
stopped is COMPLETE with its last value, and drops the value of the epoch on which it stopped (Tune does
not pass that result to on_trial_result); TPE then models stopped trials as finished ones, and every Optuna
plot and the dashboard show them as such. It also keeps its own state beside Optuna's, which a resumed
study would have to square with the record. Here Optuna's study (optuna.db) is the only state:

- each Tune trial is an Optuna trial, whose number it carries in its config ("trial_id"); a resumed study's
  unfinished trials come first, from Optuna's queue (search.resume);
- every epoch's value is an intermediate value of its Optuna trial, the last one included;
- a trial that ran the whole horizon is COMPLETE, with its value at the horizon;
- a trial stopped before the horizon is PRUNED (Optuna keeps its last value as its value);
- a trial that crashed (after its retries), diverged or found its disk full (not retried) is FAIL,
  its reason in user attrs; a RUNNING trial left when the search ends is marked FAIL.
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.search import Searcher

from recipe.checkpoint import DiskFullError, is_disk_full
from search.results import best_trial
from search.resume import sampler_seed
from search.study import StudySpec
from search.trainable import DISK_FULL, FULL_PATH, RESTARTED

logger = logging.getLogger(__name__)

EPOCH = "epoch"


def sampler_for(spec: StudySpec, seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=spec.sampler.n_startup_trials,
        multivariate=spec.sampler.multivariate, constant_liar=spec.sampler.constant_liar,
    )


def distributions(spec: StudySpec) -> dict[str, FloatDistribution]:
    return {name: FloatDistribution(p.low, p.high, log=p.log) for name, p in spec.space.items()}


def reason_of(error: BaseException | str | None, attempts: int) -> str:
    """The last line of a trial's error (the exception itself), and how often it was tried."""
    lines = [line.strip() for line in str(error or "unknown error").strip().splitlines() if line.strip()]
    return f"{lines[-1][:500] if lines else type(error).__name__} (after {attempts} attempt{'s' * (attempts != 1)})"


class StudySearcher(Searcher):
    def __init__(self, spec: StudySpec, storage: optuna.storages.BaseStorage, tune_storage: str | None = None) -> None:
        """Over the study's Optuna study in `storage`: made (the seed recipe queued as its trial 0) or taken up.

        Its TPE sampler is seeded with the study's seed at the start, and apart from it after (resume.sampler_seed).
        `tune_storage`: where Tune persists the trials' checkpoints, a local path (none for a URI): a trial that
        finds it full stops the study (every trial would), rather than failing alone as on a disk of its own.
        """
        self.tune_storage = tune_storage
        super().__init__(metric=spec.metric, mode=spec.mode)
        self.study = optuna.create_study(storage=storage, study_name=spec.name, pruner=optuna.pruners.NopPruner(),
                                         direction="maximize" if spec.mode == "max" else "minimize", load_if_exists=True)
        trials = len(self.study.get_trials(deepcopy=False))
        self.study.sampler = sampler_for(spec, sampler_seed(spec.seed, trials))
        if trials == 0:
            self.study.enqueue_trial(spec.seed_params())
        self.space, self.horizon = distributions(spec), spec.asha.horizon
        self.trials: dict[str, optuna.Trial] = {}  # by Tune trial id
        self.told: set[str] = set()
        self._pending_failures: dict[str, dict[str, Any]] = {}
        self._final_states: dict[str, tuple[str, str | None]] = {}

    # Names for the live view.
    def number(self, trial_id: str) -> int | None:
        trial = self.trials.get(trial_id)
        return trial.number if trial is not None else None

    def final_state(self, trial_id: str) -> str | None:
        """'complete', 'pruned' or 'fail' once the trial is told; None before."""
        return self._final_states.get(trial_id, (None, None))[0]

    def failure_reason(self, trial_id: str) -> str | None:
        return self._final_states.get(trial_id, (None, None))[1]

    def tally(self) -> dict[str, int]:
        """The study's ended trials, by state (a resumed study's from before included)."""
        counts = {"complete": 0, "pruned": 0, "fail": 0}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
            counts[t.state.name.lower()] += 1
        return counts

    def best_so_far(self) -> tuple[float, int] | None:
        """(value, trial number) of the best complete trial so far, if any."""
        best = best_trial(self.study, self.mode)
        return (best.value, best.number) if best is not None else None

    def suggest(self, trial_id: str) -> dict | None:
        # Optuna's queue first (the seed recipe, a resumed study's unfinished trials), then the sampler.
        trial = self.study.ask(fixed_distributions=self.space)
        trial.set_user_attr("ray_trial_id", trial_id)
        self.trials[trial_id] = trial
        return {**trial.params, "trial_id": trial.number}

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        value, epoch = result.get(self.metric), result.get(EPOCH)
        if epoch is None or value is None or not math.isfinite(value):
            return
        try:
            with warnings.catch_warnings():
                # An epoch run again (a trial restarted from epoch 0, or continued from an older checkpoint) keeps the
                # value Optuna has, as ASHA keeps its first judgement (asha.StudyASHA): by design, not worth a
                # warning. From Python 3.12 Optuna's warnings name the caller, so run.py's filter by module misses it.
                warnings.filterwarnings("ignore", message="The reported value is ignored", category=UserWarning)
                self.trials[trial_id].report(float(value), int(epoch))
        except Exception as e:
            if is_disk_full(e):  # optuna.db cannot be written: the study stops, its state saved
                raise
            logger.debug("not reported for %s: %s", trial_id, e)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if result.get("status") == DISK_FULL:  # the last epoch's figures again, told already
            self._stop_if_storage_full(result)
            return
        if trial_id in self.trials and trial_id not in self.told:
            if RESTARTED in result:  # a damaged checkpoint: the trial ran again from epoch 0
                self.trials[trial_id].set_user_attr(RESTARTED, result[RESTARTED])
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self.told or trial_id not in self.trials:
            return
        epochs = int(result.get(EPOCH, 0)) if result else 0
        if error:
            # The reason reaches us a moment later, through FailureReasons.on_trial_error.
            self._pending_failures[trial_id] = {"epochs": epochs}
            return
        if not result:  # removed by Tune before its first epoch ended
            self._finish(trial_id, TrialState.FAIL, None, epochs=0, reason="ended before its first epoch")
            return
        if result.get("status") == DISK_FULL:
            self._stop_if_storage_full(result)
            self._finish(trial_id, TrialState.FAIL, None, epochs=epochs, reason=result.get("reason") or "disk full")
            return
        if RESTARTED in result:  # restarted and ended at its first epoch back (ASHA's stop skips on_trial_result)
            self.trials[trial_id].set_user_attr(RESTARTED, result[RESTARTED])
        self._report(trial_id, result)  # Tune skips on_trial_result for the stopping epoch
        if result.get("status") == "diverged":
            self._finish(trial_id, TrialState.FAIL, None, epochs=epochs,
                         reason=f"diverged: the training loss was not finite in epoch {epochs}")
        elif epochs >= self.horizon:
            self._finish(trial_id, TrialState.COMPLETE, float(result[self.metric]), epochs=epochs)
        else:
            self._finish(trial_id, TrialState.PRUNED, None, epochs=epochs)

    def _stop_if_storage_full(self, result: dict[str, Any]) -> None:
        """The study stops (its trial left running, to continue on --resume) where the full disk is Tune's storage."""
        full = result.get(FULL_PATH)
        if self.tune_storage is None or not full:
            return
        storage = os.path.abspath(self.tune_storage)
        if os.path.commonpath([storage, os.path.abspath(full)]) == storage:
            raise DiskFullError(str(result.get("reason", "")).removeprefix("disk full: "), Path(full))

    def record_failure(self, trial_id: str, reason: str) -> None:
        pending = self._pending_failures.pop(trial_id, None)
        if pending is not None:
            self._finish(trial_id, TrialState.FAIL, None, epochs=pending["epochs"], reason=reason)

    def _finish(self, trial_id: str, state: TrialState, value: float | None, *, epochs: int, reason: str | None = None) -> None:
        trial = self.trials[trial_id]
        try:
            trial.set_user_attr("epochs", epochs)
            if reason:
                trial.set_user_attr("reason", reason)
            self.study.tell(trial, value, state=state)
        except Exception as e:  # told already: keep what Optuna has
            if is_disk_full(e):
                raise
            logger.warning("trial %s: %s", trial.number, e)
        self.told.add(trial_id)
        self._final_states[trial_id] = (state.name.lower(), reason)


def fail_running(study: optuna.Study, reason: str, keep: set[int] = frozenset()) -> list[int]:
    """Mark FAIL, with a reason, every RUNNING trial of the study but those numbered in `keep`."""
    failed = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.number not in keep:
            study._storage.set_trial_user_attr(frozen._trial_id, "reason", reason)
            study.tell(frozen.number, state=TrialState.FAIL)
            failed.append(frozen.number)
    return failed


class FailureReasons(Callback):
    """Hands the searcher the error of each trial that failed for good."""

    def __init__(self, searcher: StudySearcher) -> None:
        self.searcher = searcher

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.searcher.record_failure(trial.trial_id, reason_of(error_of(trial), trial.num_failures))


def error_of(trial: Any) -> str | None:
    """A failed trial's error as Tune wrote it: the driver's own copy (error_file), which exists at once; the copy
    on the study's storage (get_error) is synced later."""
    path = getattr(trial, "error_file", None)
    if path and os.path.isfile(path):
        with open(path) as f:
            return f.read()
    return trial.get_error()
