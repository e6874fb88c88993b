"""ASHA over a study's trials, its rungs taken from the study's record (optuna.db), so a resumed search goes on
where it was: Tune does not keep a scheduler's state across runs, and a resumed phase is a new Tune run."""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import optuna
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search.study import StudySpec


class StudyASHA(FIFOScheduler):
    """Ray's ASHA (AsyncHyperBandScheduler, one bracket, its rungs and cutoffs), over the study's trials by their
    Optuna number, its rungs taken from the record: each trial's value at each rung's epoch.

    A trial is judged at the highest rung it has reached and not been judged at; one that runs an epoch again
    (continued from a checkpoint before its last epoch, or restarted from epoch 0) is not judged again.
    """

    def __init__(self, spec: StudySpec, study: optuna.Study) -> None:
        super().__init__()
        self.objective, self.sign = spec.metric, 1.0 if spec.mode == "max" else -1.0
        self.horizon, self.rf, grace = spec.asha.horizon, spec.asha.reduction_factor, spec.asha.grace_period
        count = int(np.log(self.horizon / grace) / np.log(self.rf) + 1)  # as Ray's _Bracket counts its rungs
        self.rungs: dict[float, dict[int, float]] = {grace * self.rf ** k: {} for k in reversed(range(count))}
        for t in study.get_trials(deepcopy=False):
            for milestone, recorded in self.rungs.items():
                value = t.intermediate_values.get(milestone)
                if value is not None and math.isfinite(value):
                    recorded[t.number] = self.sign * value

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if "epoch" not in result or self.objective not in result:
            return self.CONTINUE
        if result["epoch"] >= self.horizon:
            return self.STOP
        return self.judge(int(trial.config["trial_id"]), result["epoch"], self.sign * result[self.objective])

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if "epoch" in result and self.objective in result:  # as Ray's ASHA: the last result counts at its rung
            self.judge(int(trial.config["trial_id"]), result["epoch"], self.sign * result[self.objective])

    def judge(self, number: int, epoch: float, value: float) -> str:
        for milestone, recorded in self.rungs.items():  # highest first
            if epoch < milestone or number in recorded:
                continue
            action = TrialScheduler.CONTINUE
            if recorded:
                with warnings.catch_warnings():  # a rung of values none of which is a number: no cutoff
                    warnings.simplefilter("ignore", RuntimeWarning)
                    if value < np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100):
                        action = TrialScheduler.STOP
            recorded[number] = value
            return action
        return TrialScheduler.CONTINUE
