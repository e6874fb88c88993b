"""A study's own files read back, damage included: the driver's and the report's one way to read them.

A study writes its files whole, so one that does not read was damaged from outside (an interrupted copy, a
failed disk, an editor). A file derived from others is rebuilt from them, with a note on stderr:
final/summary.json from the final runs' own summary.json files, trials.csv from optuna.db. One that is not
(spec.json, the study as it ran; revalidation.json, re-validation's record) is a one-line RecipeError naming
it and saying what to do. Reading costs no import of Optuna or pandas unless a file must be rebuilt.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from recipe.checkpoint import write_json
from recipe.config import RecipeError
from search.study import BASELINE, STUDY_FILE, StudyPaths, read_object

TRIAL_STATES = ("complete", "pruned", "failed", "running", "waiting")  # trials.csv's states (results.STATES)


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def load_revalidation(paths: StudyPaths) -> dict[str, Any] | None:
    """revalidation.json once re-validation has chosen; None before (while it runs the file holds ended re-runs)."""
    record = read_revalidation(paths)
    return record if record is not None and "chosen" in record else None


def read_revalidation(paths: StudyPaths) -> dict[str, Any] | None:
    """revalidation.json as it is (None where there is none); damaged, a RecipeError saying what to do."""
    if not paths.revalidation.is_file():
        return None
    try:
        record = read_object(paths.revalidation)
        if not isinstance(record.get("runs"), list):
            raise ValueError("no list of runs")
    except ValueError as e:
        raise RecipeError(f"{paths.revalidation}: damaged ({e}); it is re-validation's own record: put back a copy "
                          f"of it, or remove it and continue the study with --resume, which records re-validation "
                          f"again") from None
    return record


def study_file_then(paths: StudyPaths) -> dict[str, Any] | None:
    """The study file's settings when the study started, as spec.json keeps them (STUDY_FILE); None in
    a study saved before spec.json kept them. spec.json reads (StudyPaths.load_spec checks it first)."""
    then = read_object(paths.spec).get(STUDY_FILE)
    return then if isinstance(then, dict) else None


def read_run_record(path: Path, error: type[RecipeError] = RecipeError) -> dict[str, Any]:
    """A final run's own summary.json or config.json; damaged, an `error` naming it (no other file holds it)."""
    try:
        return read_object(path)
    except ValueError as e:
        raise error(f"{path}: damaged ({e}); it is the final run's own record, and no other file holds it: put back "
                    f"a copy of it") from None


def final_seeds_on_disk(paths: StudyPaths, baseline: bool = False) -> list[int]:
    """The seeds of the final runs that have a directory, final/seed-<s>/ (the baseline's: final/baseline/seed-<s>/)."""
    folder = paths.final / BASELINE if baseline else paths.final
    return sorted(int(d.name.removeprefix("seed-")) for d in folder.glob("seed-*")
                  if d.is_dir() and d.name.removeprefix("seed-").isdigit())


def load_final_summary(paths: StudyPaths) -> dict[str, Any] | None:
    """final/summary.json, None before the final runs have ended; a damaged one is rebuilt from the runs' own."""
    path = paths.final / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = read_object(path)
        if not isinstance(summary.get("status"), str):
            raise ValueError("no status")
        return summary
    except ValueError as e:
        why = e
    seeds = final_seeds_on_disk(paths)
    if not seeds:  # a study from before final/seed-<s>/ kept its one final run's own summary.json there
        raise RecipeError(f"{path}: damaged ({why}), and no final run (final/seed-<s>/) to rebuild it from; remove "
                          f"{paths.final} and continue the study with --resume, which runs the final run again")
    baseline = (paths.final / BASELINE).is_dir()
    for seed in seeds:
        for run_summary in [paths.final_run(seed) / "summary.json"] + (
                [paths.final_run(seed, baseline=True) / "summary.json"] if baseline else []):
            try:
                if run_summary.is_file():
                    read_object(run_summary)
            except ValueError as e:
                raise RecipeError(f"{path}: damaged ({why}), and so is {run_summary}, from which it is rebuilt ({e}); "
                                  f"put back a copy of either") from None
    from search.results import baseline_of, final_summary  # pure, but beside Optuna's and pandas' imports

    skipped = None
    if not baseline:  # none trained: say why, as the final stage did, where the chosen settings are the seed recipe's
        try:
            skipped = baseline_of(paths.load_spec(), read_object(paths.best))[1]
        except (OSError, ValueError, KeyError, RecipeError):
            pass  # no best.json to read it from: the summary as the runs say, without the why
    summary = final_summary(paths, seeds, baseline=baseline, skipped=skipped)
    write_json(path, summary)
    note(f"{path} was damaged ({why}); rebuilt from the final runs' own summaries "
         f"(final/{'{,baseline/}' if baseline else ''}seed-{{{','.join(map(str, seeds))}}}/summary.json)")
    return summary


def trial_states(paths: StudyPaths) -> list[str]:
    """The state of each trial trials.csv lists (written when the search ends); a damaged one is rebuilt first."""
    try:
        return read_trial_states(paths, planned=paths.load_spec().trials)
    except ValueError as e:
        why = e
    if not paths.optuna_db.is_file():
        raise RecipeError(f"{paths.trials_csv}: damaged ({why}), and {paths.optuna_db}, from which it is rebuilt, is "
                          f"gone; remove {paths.root} to start the study over")
    from search import results  # imports Optuna and pandas

    spec = paths.load_spec()
    try:
        study = results.open_study(paths, spec)
    except Exception as e:  # sqlite's, SQLAlchemy's and Optuna's errors alike: the database does not read
        raise RecipeError(f"{paths.trials_csv}: damaged ({why}), and {paths.optuna_db}, from which it is rebuilt, "
                          f"does not read ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                          f"remove {paths.root} to start the study over") from None
    results.write_trials(paths, spec, study, load_revalidation(paths))
    note(f"{paths.trials_csv} was damaged ({why}); rebuilt from {paths.optuna_db}")
    return read_trial_states(paths)  # optuna.db's trials, however many


def read_trial_states(paths: StudyPaths, planned: int | None = None) -> list[str]:
    """trials.csv's states; a ValueError saying why where a row is cut short, rows are missing (fewer than the
    `planned` trials) or the file is not a table of trials.

    A search writes trials.csv only once all its planned trials have ended (tuning.search stops the study as
    interrupted before), with a row for each trial optuna.db holds: at least the planned ones. Fewer rows are a
    file cut short at a line's end.
    """
    try:
        with open(paths.trials_csv, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"not a CSV table: {e}") from None
    if "trial_id" not in columns or "state" not in columns:
        raise ValueError("no trial_id and state columns")
    for line, row in enumerate(rows, start=2):
        if None in row or None in row.values() or row["state"] not in TRIAL_STATES:
            raise ValueError(f"line {line} is cut short or not a trial")
    if planned is not None and len(rows) < planned:
        raise ValueError(f"{len(rows)} rows, of the {planned} trials a search ends with")
    return [row["state"] for row in rows]
