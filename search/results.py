"""What a study decides and leaves: trials.csv, revalidation.json, best.json and final/summary.json.

The search's trials are Optuna's (optuna.db, never changed here). Re-validation trains the K best
complete trials again at the horizon with another seed; the chosen trial is the one with the best
mean over its runs (its search value and its re-runs). The final runs (one per seed) are summed up
in final/summary.json: each seed's test accuracy, their mean and sample standard deviation; and, with a baseline
(the seed recipe trained beside them on the same seeds), the same of its runs and the paired difference.
"""
from __future__ import annotations

import json
import math
import statistics
from typing import Any, Collection, Sequence

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from recipe.checkpoint import write_json, write_text
from search.record import read_run_record
from search.study import FINISHED, SEARCHED, StudyPaths, StudySpec, final_run_name

STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
COLUMNS = ["trial_id", "state", "epochs", "value", "best_value", "revalidated_values", "mean_value", *SEARCHED,
           "time_s", "ray_trial_id", "reason"]


def open_study(paths: StudyPaths, spec: StudySpec) -> optuna.Study:
    return optuna.load_study(study_name=spec.name, storage=optuna.storages.RDBStorage(paths.storage_url))


def trials_frame(study: optuna.Study, spec: StudySpec, revalidation: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per trial: its settings, state, epochs run, last and best value, re-run values, and time.

    revalidated_values (a JSON list) and mean_value are filled for the re-validated trials only.
    """
    pick = max if spec.mode == "max" else min
    revalidated = {r["trial_id"]: r for r in (revalidation or {}).get("trials", [])}
    rows = []
    for t in study.get_trials(deepcopy=False):
        again = revalidated.get(t.number)
        values = [v for v in t.intermediate_values.values() if math.isfinite(v)]
        end = t.datetime_complete
        rows.append({
            "trial_id": t.number,
            "state": STATES.get(t.state, t.state.name.lower()),
            "epochs": t.user_attrs.get("epochs", max(t.intermediate_values, default=0)),
            "value": t.value,
            "best_value": pick(values) if values else None,
            "revalidated_values": json.dumps([v if math.isfinite(v) else None for v in again["values"][1:]])
            if again else None,  # JSON: a diverged re-run is null
            "mean_value": again["mean_value"] if again else None,
            **{name: t.params.get(name) for name in SEARCHED},
            "time_s": (end - t.datetime_start).total_seconds() if end and t.datetime_start else None,
            "ray_trial_id": t.user_attrs.get("ray_trial_id"),
            "reason": t.user_attrs.get("reason"),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def ranked(trials: Sequence[FrozenTrial], mode: str) -> list[FrozenTrial]:
    """Complete trials, best value first; ties go to the earlier trial, so the seed recipe wins a tie."""
    sign = 1 if mode == "max" else -1
    return sorted(trials, key=lambda t: (-sign * t.value, t.number))


def top_trials(study: optuna.Study, mode: str, k: int) -> list[FrozenTrial]:
    """The k best trials among those that ran the whole horizon (COMPLETE)."""
    return ranked(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), mode)[:k]


def best_trial(study: optuna.Study, mode: str) -> FrozenTrial | None:
    """The best trial among those that ran the whole horizon (COMPLETE) by its value; None if there is none."""
    top = top_trials(study, mode, 1)
    return top[0] if top else None


def mean_of(values: Sequence[float]) -> float:
    """The mean of a trial's runs; not a number where one of them diverged (it then ranks last)."""
    return statistics.fmean(values) if all(math.isfinite(v) for v in values) else float("nan")


def revalidation_record(study: optuna.Study, spec: StudySpec, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What re-validation found and chose, from the top trials and their re-runs.

    `runs`: one record per re-run ({"trial_id", "seed", "status", "value", "epochs", "time_s", ...}).
    A re-run's value counts where it ran the whole horizon; a diverged one counts as not a number
    (the trial's mean then ranks last); a failed one (a crash after its retries, or a full disk)
    says nothing of the settings and is left out, but a trial short of a run ranks after those with
    all of theirs: its mean would be its search value alone, the very figure the winner's curse
    inflates. Best mean wins; ties go to the trial ranked higher by the search.
    """
    top = top_trials(study, spec.mode, spec.selection.revalidate_top)
    sign = 1 if spec.mode == "max" else -1
    trials = []
    for rank, t in enumerate(top):
        mine = [r for r in runs if r["trial_id"] == t.number]
        again = [r["value"] for r in mine if r["value"] is not None]
        values = [float(t.value), *again]
        trials.append({"trial_id": t.number, "value": t.value, "values": values, "mean_value": mean_of(values),
                       "missing_runs": len(mine) - len(again), "rank": rank})
    chosen = min(trials, key=lambda r: (not math.isfinite(r["mean_value"]), r["missing_runs"] > 0,
                                        -sign * r["mean_value"] if math.isfinite(r["mean_value"]) else 0, r["rank"]))
    # A re-run that ended before its first epoch has Tune's start-up figures only: an end, no time.
    timed = [r for r in runs if r.get("ended") is not None and r.get("time_s") is not None]
    starts = [r["ended"] - r["time_s"] for r in timed]
    return {
        "top": spec.selection.revalidate_top,
        "seed": spec.revalidation_seed(),
        "horizon": spec.asha.horizon,
        "metric": spec.metric,
        "trials": trials,
        "runs": runs,
        "chosen": chosen["trial_id"],
        "best_single": top[0].number,
        "changed": chosen["trial_id"] != top[0].number,
        "epochs": sum(int(r.get("epochs") or 0) for r in runs),
        "wall_time_s": (max(r["ended"] for r in timed) - min(starts)) if starts else None,
    }


def chosen_trial(study: optuna.Study, spec: StudySpec, revalidation: dict[str, Any] | None) -> FrozenTrial | None:
    """The study's answer: the re-validation's choice where it ran, else the best complete trial."""
    if revalidation is None:
        return best_trial(study, spec.mode)
    return study.trials[revalidation["chosen"]]


def best_record(spec: StudySpec, trial: FrozenTrial, revalidation: dict[str, Any] | None = None) -> dict[str, Any]:
    again = next((r for r in (revalidation or {}).get("trials", []) if r["trial_id"] == trial.number), None)
    return {
        "study": spec.name,
        "trial_id": trial.number,
        "ray_trial_id": trial.user_attrs.get("ray_trial_id"),
        "metric": spec.metric,
        "value": trial.value,  # the search's value at the horizon
        "mean_value": again["mean_value"] if again else trial.value,  # what chose it: the mean over its runs
        "values": again["values"] if again else [trial.value],  # every run's value, the search's first
        "revalidated": again is not None,
        "best_single_trial_id": revalidation["best_single"] if revalidation else trial.number,
        "epochs": trial.user_attrs.get("epochs", spec.asha.horizon),
        "params": {name: trial.params[name] for name in SEARCHED},
        "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "final_config": spec.final_config(dict(trial.params)).to_dict(),
        "baseline_params": spec.seed_params(),  # the seed recipe's (trial 0's): recipe.train --from-study baseline
    }


def write_trials(paths: StudyPaths, spec: StudySpec, study: optuna.Study,
                 revalidation: dict[str, Any] | None = None) -> None:
    write_text(paths.trials_csv, trials_frame(study, spec, revalidation).to_csv(index=False))


def write_results(paths: StudyPaths, spec: StudySpec, study: optuna.Study,
                  revalidation: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Write trials.csv and, if any trial ran the whole horizon, best.json; return the best record."""
    write_trials(paths, spec, study, revalidation)
    trial = chosen_trial(study, spec, revalidation)
    if trial is None:
        return None
    record = best_record(spec, trial, revalidation)
    write_json(paths.best, record)
    return record


# Student's t distribution's 0.975 quantile (two-sided 95%) by degrees of freedom, 1 to 30; beyond, the normal's.
# (No scipy in this project for one table: tests/test_selection.py checks each against the t density.)
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
         2.0518, 2.0484, 2.0452, 2.0423)
Z_975 = 1.95996


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile with `df` degrees of freedom (>= 1): a 95% interval's half-width in standard errors.

    Beyond 30 degrees of freedom the normal's 1.960, a little narrow (2.021 at 40): a study has a few seeds.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T_975[df - 1] if df <= len(T_975) else Z_975


def final_group(paths: StudyPaths, seeds: Sequence[int], baseline: bool, failed: Collection[str]) -> dict[str, Any]:
    """One group of final runs (the chosen settings', or the baseline's): each seed's run, their mean and sample std.

    `failed`: the runs (final_run_name) Tune gave up on, failed whatever their directory last said.
    """
    runs = []
    for seed in seeds:
        name = final_run_name(seed, baseline)
        where = paths.final_run(seed, baseline) / "summary.json"
        summary = read_run_record(where) if where.is_file() else {"status": "not run"}  # damaged: a RecipeError
        status = "failed" if name in failed else summary.get("status")
        runs.append({"seed": seed, "dir": name, "status": status,
                     **{k: summary.get(k) for k in ("final_eval_acc", "best_eval_acc", "best_epoch", "epochs_run",
                                                   "epochs", "eval_set", "wall_time_s")}})
    accs = [a for r in runs if (a := completed_acc(r)) is not None]
    return {
        "runs": runs,
        "n": len(accs),
        "mean_final_eval_acc": statistics.fmean(accs) if accs else None,
        "std_final_eval_acc": statistics.stdev(accs) if len(accs) > 1 else None,  # sample std (n - 1)
    }


def completed_acc(run: dict[str, Any]) -> float | None:
    """A final run's last-epoch test accuracy where it completed with a number; None otherwise."""
    acc = run.get("final_eval_acc")
    return acc if run["status"] == "completed" and acc is not None and math.isfinite(acc) else None


def paired_difference(chosen: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Chosen minus baseline, seed by seed, over the seeds both completed: mean, sample std, n and a 95% t-interval.

    Paired because the same seed draws the same initialisation in both groups (and the same data order and
    augmentation, unless one side's dropout is 0: it draws nothing, and the two random sequences part): much of the
    seed's own luck cancels out of each difference. None where no seed has both; no std or interval for one.
    """
    by_seed = {r["seed"]: completed_acc(r) for r in baseline}
    pairs = [(r["seed"], a - b) for r in chosen if (a := completed_acc(r)) is not None
             and (b := by_seed.get(r["seed"])) is not None]
    if not pairs:
        return None
    values = [d for _, d in pairs]
    n, mean = len(values), statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else None
    half = t_quantile_975(n - 1) * std / math.sqrt(n) if std is not None else None
    return {"of": "chosen - baseline", "seeds": [s for s, _ in pairs], "values": values, "n": n, "mean": mean,
            "std": std, "ci95": [mean - half, mean + half] if half is not None else None}


NO_BASELINE = "the chosen settings are the seed recipe's own: no baseline to train"


def baseline_of(spec: StudySpec, best: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether the final stage trains the seed recipe beside the chosen settings (best.json's); and why not, where the
    study asked for it but the chosen settings are the seed recipe's own (nothing to compare)."""
    if not spec.selection.baseline:
        return False, None
    if best["params"] == spec.seed_params():
        return False, NO_BASELINE
    return True, None


def final_summary(paths: StudyPaths, seeds: Sequence[int], failed: Collection[str] = (),
                  baseline: bool = False, skipped: str | None = None) -> dict[str, Any]:
    """The final runs in one record: each seed's run, its last-epoch test accuracy, their mean and sample std; with
    `baseline`, the same of the seed recipe's runs on the same seeds (`baseline`) and the paired difference, chosen
    minus baseline (`difference`). `skipped`: why a study that asked for a baseline trains none.

    The chosen settings' group is at the top level (runs, n, mean_final_eval_acc, std_final_eval_acc), as in a study
    without a baseline. status: "completed" when every run of both groups completed; else the first status of a
    run --resume runs again ("failed", for the runs in `failed` (final_run_name), which Tune gave up on;
    "interrupted"; "not run" for a run with no summary yet), and only then "diverged", which ended for good.
    """
    chosen = final_group(paths, seeds, False, failed)
    other = final_group(paths, seeds, True, failed) if baseline else None
    every = chosen["runs"] + (other["runs"] if other else [])
    # A run to do again (failed, interrupted, not run) before one that ended for good (diverged).
    statuses = [r["status"] for r in every]
    status = next((s for s in statuses if s not in FINISHED), next((s for s in statuses if s != "completed"), "completed"))
    return {
        "status": status,
        "seeds": list(seeds),
        "eval_set": next((r["eval_set"] for r in every if r["eval_set"]), "test"),
        **chosen,
        "baseline": other,
        "baseline_skipped": skipped,
        "difference": paired_difference(chosen["runs"], other["runs"]) if other else None,
        "wall_time_s": max((r["wall_time_s"] or 0 for r in every), default=0),  # side by side: the longest run
        "epochs_run": sum(r["epochs_run"] or 0 for r in every),
    }


def final_exit_status(summary: dict[str, Any]) -> int:
    """The study's exit status once its final stage has ended: 0 where every run of the chosen settings completed.

    A baseline run that diverged is a finding about the seed recipe, said by the last line, not a failure of the study:
    its final model was trained. A run that diverged for good among the chosen settings', or one to run again, is 1.
    """
    if summary["status"] == "completed":
        return 0
    redo = summary["status"] not in FINISHED
    return 1 if redo or any(r["status"] != "completed" for r in summary["runs"]) else 0


def percent(mean: float, std: float | None) -> str:
    return f"{100 * mean:.2f}" + (f" +- {100 * std:.2f}%" if std is not None else "%")


def final_line(summary: dict[str, Any]) -> str:
    """The study's last word: "final: 78.12 +- 0.21% test accuracy over 3 seeds" (one number for one seed), and
    with a baseline "; the seed recipe: 77.40 +- 0.30% (+0.72 points, 95% CI +0.20 to +1.24, paired over 3 seeds)"."""
    mean, std, n = summary["mean_final_eval_acc"], summary["std_final_eval_acc"], summary["n"]
    name = summary.get("eval_set") or "test"
    if mean is None:
        return f"final: no {name} accuracy ({summary['status']})" + comparison_text(summary)
    seeds = len(summary["seeds"])
    counted = "" if n == seeds else f" ({n} of {seeds} runs completed; {not_counted(summary['runs'])})"
    head = f"final: {percent(mean, std)} {name} accuracy"
    if std is None:
        head += f" (seed {summary['runs'][0]['seed']})" if seeds == 1 else counted
    else:
        head += f" over {n} seeds{counted}"
    return head + comparison_text(summary)


def not_counted(runs: Sequence[dict[str, Any]]) -> str:
    """The runs left out of a group's mean, by seed: "seed 1 diverged, seed 2 not run"."""
    return ", ".join(f"seed {r['seed']} {r['status'] if r['status'] != 'completed' else 'without an accuracy'}"
                     for r in runs if completed_acc(r) is None)


def comparison_text(summary: dict[str, Any]) -> str:
    """The baseline beside the chosen settings, as the study's last line and the report's header say it ("" without)."""
    if summary.get("baseline_skipped"):
        return f"; {summary['baseline_skipped']}"
    baseline = summary.get("baseline")
    if not baseline:
        return ""
    mean, std, n = baseline["mean_final_eval_acc"], baseline["std_final_eval_acc"], baseline["n"]
    if mean is None:
        status = next((r["status"] for r in baseline["runs"] if r["status"] != "completed"), "none completed")
        return f"; the seed recipe: no {summary.get('eval_set') or 'test'} accuracy ({status})"
    seeds = len(baseline["runs"])
    counted = "" if n == seeds else f", {n} of {seeds} runs completed; {not_counted(baseline['runs'])}"
    diff = summary.get("difference")
    if diff is None:
        return f"; the seed recipe: {percent(mean, std)}{counted}"
    points = f"{100 * diff['mean']:+.2f} points"
    if diff["ci95"] is None:
        return f"; the seed recipe: {percent(mean, std)} ({points}{counted})"
    low, high = diff["ci95"]
    return (f"; the seed recipe: {percent(mean, std)} ({points}, 95% CI {100 * low:+.2f} to {100 * high:+.2f}, "
            f"paired over {diff['n']} seeds{counted})")
