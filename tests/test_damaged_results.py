"""Damaged result files: a derived one is rebuilt from its sources, one that is not is one line saying what to do.

final/summary.json is rebuilt from the final runs' own summaries, trials.csv from optuna.db (each with a note);
spec.json and revalidation.json, which nothing else holds, are named in one line with exit status 2 and
nothing changed. The study directories are made by hand (tests/report_fixture.py), the commands called in
the tests' own process; search.run never reaches Ray here (no_ray).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from recipe.config import RecipeError
from recipe.train import config_from_study
from recipe.train import main as train_main
from conftest import call_main
from report_fixture import FINISHED, make_study
from search import report
from search import results as study_results
from search import run as search_run
from search.record import load_final_summary, load_revalidation
from search.study import StudyPaths


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A study that has finished: two final seeds and re-validation of its top two trials (made once: a second)."""
    results = tmp_path_factory.mktemp("made")
    make_study(results, "smoke", FINISHED, finished=True, final="completed", seeds=2, revalidated={2: 0.50, 7: 0.46})
    return results / "smoke"


@pytest.fixture
def finished_study(work, made) -> StudyPaths:
    """results/smoke/ under work: a copy of the finished study, for the test to damage."""
    shutil.copytree(made, work / "results" / "smoke")
    return StudyPaths(work / "results" / "smoke")


def cut_short(path: Path) -> None:
    """The file as an interrupted copy leaves it: its first half."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def tree(root: Path) -> dict[str, bytes | str]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def search(work: Path, capsys, *argv: str) -> tuple[int, str, str]:
    return call_main(search_run.main, ["--study", "smoke", "--results-dir", str(work / "results"), *argv], capsys)


def report_of(work: Path, capsys) -> tuple[int, str, str]:
    return call_main(report.main, ["--study", "smoke", "--results-dir", str(work / "results")], capsys)


def assert_one_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2, (code, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# ---- not derived: named in one line, nothing changed ---------------------------------------------------

def test_resuming_with_a_cut_short_spec_json_is_one_line_saying_what_to_do(work, finished_study, no_ray, capsys):
    paths = finished_study
    cut_short(paths.spec)
    before = tree(work)
    code, out, err = search(work, capsys, "--resume")
    assert_one_line(code, err, f"{paths.spec}: damaged (not valid JSON: ", "put back a copy of it, or remove "
                    f"{paths.root} to start the study over")
    assert out == "" and tree(work) == before


@pytest.mark.parametrize("damaged, then", [
    ("spec.json", "put back a copy of it"),
    ("revalidation.json", "put back a copy of it, or remove it and continue the study with --resume"),
    ("final/seed-1/summary.json", "put back a copy of it"),
], ids=["spec", "revalidation", "final-run-summary"])
def test_a_report_of_a_study_with_a_cut_short_record_file_is_one_line(work, finished_study, capsys, damaged, then):
    path = finished_study.root / damaged
    cut_short(path)
    before = tree(work)
    code, out, err = report_of(work, capsys)
    assert_one_line(code, err, f"{path}: damaged (not valid JSON: ", then)
    assert out == "" and tree(work) == before  # no report.html


def test_resuming_with_a_cut_short_revalidation_json_is_one_line_before_ray_starts(work, finished_study, no_ray,
                                                                                   capsys):
    paths = finished_study
    cut_short(paths.revalidation)
    before = tree(work)
    code, out, err = search(work, capsys, "--resume")
    assert_one_line(code, err, f"{paths.revalidation}: damaged (not valid JSON: ")
    assert out == "" and tree(work) == before


# ---- derived: rebuilt from their sources ---------------------------------------------------------------

def test_a_cut_short_final_summary_is_rebuilt_from_the_final_runs_by_search_run(work, finished_study, no_ray,
                                                                                 capsys):
    paths = finished_study
    summary = paths.final / "summary.json"
    whole = json.loads(summary.read_text())
    cut_short(summary)
    code, _, err = search(work, capsys)
    note, error = err.splitlines()
    assert note.startswith(f"note: {summary} was damaged (not valid JSON: ") and note.endswith(
        "rebuilt from the final runs' own summaries (final/seed-{0,1}/summary.json)"), note
    assert code == 2 and error.startswith(f"error: {paths.root}: study 'smoke' has finished"), error  # as before
    assert json.loads(summary.read_text()) == whole


def test_a_cut_short_final_summary_is_rebuilt_by_the_report_which_shows_it(work, finished_study, capsys):
    paths = finished_study
    summary = paths.final / "summary.json"
    whole = json.loads(summary.read_text())
    cut_short(summary)
    code, out, err = report_of(work, capsys)
    assert code == 0 and out == f"report: {paths.report}\n", (out, err)
    assert err.startswith(f"note: {summary} was damaged") and err.count("\n") == 1, err
    assert json.loads(summary.read_text()) == whole
    mean, std = 100 * whole["mean_final_eval_acc"], 100 * whole["std_final_eval_acc"]
    assert f"test accuracy {mean:.2f}% +- {std:.2f}% at the last epoch, mean and sample std over 2 seeds" in (
        paths.report.read_text())


def test_a_rebuilt_final_summary_says_why_there_is_no_baseline_where_the_seed_recipe_was_chosen(finished_study):
    paths = finished_study
    spec = paths.load_spec()
    assert spec.selection.baseline  # the study asked for one
    best = json.loads(paths.best.read_text())
    paths.best.write_text(json.dumps({**best, "trial_id": 0, "params": spec.seed_params()}))
    summary = paths.final / "summary.json"
    cut_short(summary)
    rebuilt = load_final_summary(paths)
    assert rebuilt["baseline"] is None and rebuilt["baseline_skipped"] == study_results.NO_BASELINE
    assert study_results.final_line(rebuilt).endswith("; " + study_results.NO_BASELINE)
    cut_short(summary)
    paths.best.unlink()  # nothing to say why from: the runs' figures alone
    assert load_final_summary(paths)["baseline_skipped"] is None


def test_a_cut_short_trials_csv_is_rebuilt_from_optuna_db(work, finished_study, no_ray, capsys):
    paths = finished_study
    paths.best.unlink()  # re-validation had not chosen: the study's state is read from trials.csv
    study = study_results.open_study(paths, paths.load_spec())
    expected = study_results.trials_frame(study, paths.load_spec(), load_revalidation(paths))
    cut_short(paths.trials_csv)
    code, _, err = search(work, capsys)
    note, error = err.splitlines()
    assert note.startswith(f"note: {paths.trials_csv} was damaged (line ") and note.endswith(
        f"rebuilt from {paths.optuna_db}"), note
    assert code == 2 and "was interrupted; add --resume to continue it" in error, error  # it has complete trials
    assert paths.trials_csv.read_text() == expected.to_csv(index=False)


def test_a_cut_short_trials_csv_is_one_line_for_recipe_train_and_rebuilt_by_the_report_it_names(work, finished_study,
                                                                                               capsys):
    paths = finished_study
    whole = paths.trials_csv.read_text()
    cut_short(paths.trials_csv)
    results = work / "results"
    code, out, err = call_main(train_main, ["--from-study", "7", "--study", "smoke", "--results-dir", str(results)], capsys)
    assert_one_line(code, err, f"{paths.trials_csv}: damaged (", f"python -m search.report --study smoke --results-dir "
                    f"{results} rebuilds it from the study's optuna.db")
    assert out == "" and not list(paths.root.glob("7-*"))  # no run directory
    code, _, err = report_of(work, capsys)
    assert code == 0 and err.startswith(f"note: {paths.trials_csv} was damaged"), err
    study = study_results.open_study(paths, paths.load_spec())
    assert paths.trials_csv.read_text() == study_results.trials_frame(study, paths.load_spec(),
                                                                      load_revalidation(paths)).to_csv(
        index=False) != whole  # rebuilt as the driver writes it (the fixture's own lacks the re-validation columns)
    config, taken, _ = config_from_study(results, "smoke", "7")
    assert config.lr == study.trials[7].params["lr"] and "trial 7 (complete" in taken


def test_a_trials_csv_cut_at_a_line_end_is_rebuilt_from_optuna_db(work, finished_study, no_ray, capsys):
    paths = finished_study
    paths.best.unlink()  # re-validation had not chosen: the study's state is read from trials.csv
    lines = paths.trials_csv.read_text().splitlines(keepends=True)
    paths.trials_csv.write_text("".join(lines[:3]))  # the header and two whole rows: every row reads
    code, _, err = search(work, capsys)
    note, error = err.splitlines()
    assert note == (f"note: {paths.trials_csv} was damaged (2 rows, of the {len(FINISHED)} trials a search ends "
                    f"with); rebuilt from {paths.optuna_db}"), note
    assert code == 2 and "was interrupted; add --resume to continue it" in error, error
    assert len(paths.trials_csv.read_text().splitlines()) == 1 + len(FINISHED)


# ---- a final run's own files: nothing else holds them --------------------------------------------------

def test_summing_up_final_runs_one_of_which_has_a_cut_short_summary_is_one_error_naming_it(finished_study):
    run_summary = finished_study.final_run(1) / "summary.json"
    cut_short(run_summary)
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(run_summary))}: damaged \(not valid JSON: "):
        study_results.final_summary(finished_study, [0, 1])  # as the driver does once the final runs have ended


def test_a_trials_csv_cut_at_a_line_end_is_one_line_for_recipe_train_naming_the_report_that_rebuilds_it(
        work, finished_study, capsys):
    paths = finished_study
    lines = paths.trials_csv.read_text().splitlines(keepends=True)
    paths.trials_csv.write_text("".join(lines[:3]))  # trials 0 and 1 whole; trial 7 gone
    code, out, err = call_main(train_main, ["--from-study", "7", "--study", "smoke", "--results-dir",
                                       str(work / "results")], capsys)
    assert_one_line(code, err, f"{paths.trials_csv}: damaged (ValueError: 2 rows, of the {len(FINISHED)} trials a "
                    "search ends with); python -m search.report --study smoke")
    assert out == "" and not list(paths.root.glob("7-*"))
