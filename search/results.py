"""What a finished search leaves: trials.csv and best.json, read from the Optuna study."""
from __future__ import annotations

import math
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from recipe.checkpoint import write_json, write_text
from search.study import SEARCHED, StudyPaths, StudySpec

STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
COLUMNS = ["trial_id", "state", "epochs", "value", "best_value", *SEARCHED, "time_s", "ray_trial_id", "reason"]


def open_study(paths: StudyPaths, spec: StudySpec) -> optuna.Study:
    return optuna.load_study(study_name=spec.name, storage=optuna.storages.RDBStorage(paths.storage_url))


def trials_frame(study: optuna.Study, spec: StudySpec) -> pd.DataFrame:
    """One row per trial: its settings, state, epochs run, last and best value, and time."""
    pick = max if spec.mode == "max" else min
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = [v for v in t.intermediate_values.values() if math.isfinite(v)]
        end = t.datetime_complete
        rows.append({
            "trial_id": t.number,
            "state": STATES.get(t.state, t.state.name.lower()),
            "epochs": t.user_attrs.get("epochs", max(t.intermediate_values, default=0)),
            "value": t.value,
            "best_value": pick(values) if values else None,
            **{name: t.params.get(name) for name in SEARCHED},
            "time_s": (end - t.datetime_start).total_seconds() if end and t.datetime_start else None,
            "ray_trial_id": t.user_attrs.get("ray_trial_id"),
            "reason": t.user_attrs.get("reason"),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def best_trial(study: optuna.Study, mode: str) -> FrozenTrial | None:
    """The best trial among those that ran the whole horizon (COMPLETE); None if there is none."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    sign = 1 if mode == "max" else -1
    # Ties go to the earlier trial, so the seed recipe wins a tie.
    return max(complete, key=lambda t: (sign * t.value, -t.number))


def best_record(spec: StudySpec, trial: FrozenTrial) -> dict[str, Any]:
    return {
        "study": spec.name,
        "trial_id": trial.number,
        "ray_trial_id": trial.user_attrs.get("ray_trial_id"),
        "metric": spec.metric,
        "value": trial.value,
        "epochs": trial.user_attrs.get("epochs", spec.asha.horizon),
        "params": {name: trial.params[name] for name in SEARCHED},
        "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "final_config": spec.final_config(dict(trial.params)).to_dict(),
    }


def write_results(paths: StudyPaths, spec: StudySpec, study: optuna.Study) -> dict[str, Any] | None:
    """Write trials.csv and, if any trial ran the whole horizon, best.json; return the best record."""
    write_text(paths.trials_csv, trials_frame(study, spec).to_csv(index=False))
    trial = best_trial(study, spec.mode)
    if trial is None:
        return None
    record = best_record(spec, trial)
    write_json(paths.best, record)
    return record
