"""The study report: what a user reads in results/<study>/report.html, finished study or running."""
from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import plotly.offline
import pytest

from report_fixture import (FINISHED, NO_COMPLETE, RUNNING, SMALL, FakeTrial, check_report_in_browser, make_study,
                            require_browser)
from search import report
from search.study import StudyPaths
from search.study import load as load_study

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ["fig-final", "fig-final-run", "fig-revalidation", "fig-history", "fig-curves", "fig-parallel",
           "fig-importances", "fig-slice"]
# The finished study's top trials by their search value are 2 (52%) and 7 (45%); re-run, 2 scores 36% and 7 47%:
# by the mean over its runs 7 (46%) beats 2 (44%), and is chosen.
REVALIDATED = {2: 0.36, 7: 0.47}
VALUE = "value (%)"



def text_of(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}">(.*?)</', page, re.S)
    assert match, f"no element with id {element_id!r} in the report"
    return html.unescape(match.group(1))


def table_rows(page: str) -> dict[int, str]:
    """The trials table: trial number -> state."""
    table = re.search(r'<table[^>]*id="trials">(.*?)</table>', page, re.S).group(1)
    return {int(n): state for n, state in re.findall(r"<tr>\s*<td>(\d+)</td>\s*<td>(\w+)</td>", table)}


def figure_ids(page: str) -> list[str]:
    return re.findall(r'<div id="(fig-[a-z-]+)" class="plotly-graph-div"', page)


def reported(results: Path, name: str, trials, **kwargs) -> tuple[StudyPaths, str]:
    paths = make_study(results, name, trials, **kwargs)
    out = report.write_report(paths)
    assert out == paths.report
    return paths, out.read_text()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return reported(tmp_path_factory.mktemp("results"), "finished", FINISHED, finished=True, final="completed",
                    seeds=3, revalidated=REVALIDATED)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    return reported(tmp_path_factory.mktemp("results"), "running", RUNNING, finished=False, final="running",
                    planned=10)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return reported(tmp_path_factory.mktemp("results"), "small", SMALL, finished=True, final=None)


# ---- the header ---------------------------------------------------------------------------------

def test_header_counts_trials_by_state(finished):
    _, page = finished
    assert text_of(page, "header-trials") == "10 of 10 planned: 5 complete, 4 pruned, 1 failed"


def test_header_compares_epochs_run_with_no_early_stopping(finished):
    # 5 complete x 4 + pruned 1 + 2 + 1 + 2 + failed 2 = 28 run; 9 x 4 + 2 (a failed trial fails anyway) = 38.
    paths, page = finished
    budget = report.epoch_budget(report.open_study(paths, paths.load_spec()).trials, horizon=4)
    assert (budget.run, budget.without_stopping, budget.running_trials) == (28, 38, 0)
    assert text_of(page, "header-epochs").startswith("28 epochs run by 10 finished trials, against 38 without")
    assert "26.3% saved" in text_of(page, "header-epochs")


def test_header_wall_time_runs_from_first_start_to_last_end(finished):
    # Trial n starts at minute n and runs 30 s an epoch: trial 8 (4 epochs) and 9 (2 epochs) end at 10:00.
    assert text_of(finished[1], "header-wall") == "10 min 00 s"


def test_header_names_the_trial_re_validation_chose_and_its_settings(finished):
    best = text_of(finished[1], "header-best")
    assert best.startswith("trial 7: validation accuracy 45.00% at epoch 4, mean 46.00% over 2 runs, chosen by "
                           "re-validation over trial 2 (the best single value);")
    assert "peak learning rate" in best


def test_header_names_the_best_complete_trial_where_nothing_was_re_validated(small):
    best = text_of(small[1], "header-best")
    assert best.startswith("trial 2: validation accuracy 52.00% at epoch 4;")
    assert "peak learning rate 0.6802" in best


def test_header_gives_the_final_runs_mean_and_std_over_seeds_and_each_seed(finished):
    # Seeds 0, 1, 2 end at 45%, 46%, 47%: mean 46%, sample std 1 point.
    assert text_of(finished[1], "header-final") == (
        "test accuracy 46.00% +- 1.00% at the last epoch, mean and sample std over 3 seeds; "
        "seed 0: 45.00%, seed 1: 46.00%, seed 2: 47.00%")


def test_header_labels_a_single_final_runs_last_and_best_epoch(tmp_path):
    _, page = reported(tmp_path, "one", SMALL, finished=True, final="completed")
    assert text_of(page, "header-final") == (
        "test accuracy 45.00% at the last epoch (4 of 4); best epoch: 47.00% at epoch 3 "
        "(picked on the test set itself, so quote the last epoch)")
    assert "re-validation" not in text_of(page, "header-epochs") and "extra final seeds" not in text_of(page, "header-epochs")


def test_header_budget_counts_re_validation_and_extra_seeds_beside_early_stopping(finished):
    epochs = text_of(finished[1], "header-epochs")
    assert "26.3% saved; re-validation: 2 runs of the top trials, 8 epochs, 3 min 00 s of wall time; " in epochs
    # A study on CPUs (gpus = 0, as the smoke study): no GPU to name.
    assert epochs.endswith("extra final seeds: 2 (8 epochs, 16 s of run time, side by side with the first seed's run)")


@pytest.mark.parametrize("gpus, says", [(0, "CPU only, 1 CPU per trial"), (None, "GPUs all, 4 trials per GPU, 1 CPU"),
                                        (2, "GPUs 2, 4 trials per GPU, 1 CPU per trial")], ids=["cpu", "all", "two"])
def test_the_studys_resources_are_named_as_it_ran(gpus, says):
    spec = load_study("smoke")
    spec = spec.replace(resources=dataclasses.replace(spec.resources, gpus=gpus))
    assert f"<dt>resources</dt><dd>{says}" in report.spec_html(spec)


def test_re_validation_shows_each_top_trials_runs_their_mean_and_the_choice(finished):
    paths, page = finished
    table = re.search(r'<table[^>]*id="revalidated">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r"<tr>\s*<td>(\d+)</td>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>",
                      table)
    assert rows == [("2", "52.00%", "36.00% (seed 1)", "44.00%", ""), ("7", "45.00%", "47.00% (seed 1)", "46.00%", "chosen")]
    assert "trial 7 chosen by its mean, over trial 2 (the best single value)" in page


def test_the_trials_table_has_the_re_runs_and_the_mean(finished):
    page = finished[1]
    table = re.search(r'<table[^>]*id="trials">(.*?)</table>', page, re.S).group(1)
    assert "<th>re-runs (%)</th>" in table and "<th>mean (%)</th>" in table
    row7 = re.search(r"<tr>\s*<td>7</td>(.*?)</tr>", table, re.S).group(1)
    assert re.findall(r"<td>([^<]*)</td>", row7)[3:6] == ["45.00", "47.00", "46.00"]


def test_header_of_a_running_study_counts_running_trials_apart(running):
    _, page = running
    assert text_of(page, "header-trials") == "5 of 10 planned: 1 complete, 1 pruned, 0 failed, 3 running"
    assert text_of(page, "header-epochs") == (
        "5 epochs run by 2 finished trials, against 8 without early stopping (complete and pruned trials at the "
        "horizon of 4, failed ones as far as they ran): 37.5% saved; 3 running trials: 3 epochs so far")
    assert text_of(page, "header-wall").endswith("so far")
    assert text_of(page, "header-final") == "running, epoch 2 of 4; test accuracy 34.00% at epoch 2"


def test_header_of_a_diverged_final_run_says_where_it_stopped():
    history = [{"epoch": 1, "eval_acc": 0.2}, {"epoch": 2, "eval_acc": float("nan")}]
    final = report.FinalRun(status="diverged", epochs=4, history=history,
                            summary={"status": "diverged", "eval_set": "test", "best_eval_acc": 0.2, "best_epoch": 1})
    assert report.run_text(final).startswith("diverged at epoch 2 of 4; best epoch: 20.00% at epoch 1")


def test_a_study_without_optuna_db_yet_reports_no_trials(tmp_path):
    paths = make_study(tmp_path, "fresh", SMALL, finished=False, final=None)
    paths.optuna_db.unlink()
    page = report.write_report(paths).read_text()
    assert text_of(page, "header-trials") == "no trials yet (no optuna.db)"
    assert text_of(page, "trials-missing") == "No trials yet."
    assert not paths.optuna_db.exists()


def test_minimised_loss_picks_the_lowest_and_is_shown_in_nats(tmp_path):
    trials = [FakeTrial("complete", [3.0, 2.5, 2.0, 1.8]), FakeTrial("complete", [3.1, 2.4, 1.9, 1.5]),
              FakeTrial("pruned", [3.5])]
    _, page = reported(tmp_path, "loss", trials, finished=True, final=None, metric="eval_loss")
    assert text_of(page, "header-best").startswith("trial 1: validation loss 1.5000 nats at epoch 4;")
    assert "validation loss (nats)" in page


@pytest.mark.parametrize("metric, scale", [("eval_loss", "log"), ("eval_acc", "linear")])
def test_every_trials_values_are_drawn_on_a_log_axis_where_they_are_losses(tmp_path, metric, scale):
    # A diverged trial's loss (thousands) beside the others' (hundredths apart): on a log axis both can be read.
    trials = [FakeTrial("complete", [4.7, 4.65, 4.62, 4.61]), FakeTrial("pruned", [6158.7]),
              FakeTrial("complete", [4.8, 4.7, 4.66, 4.64])]
    paths = make_study(tmp_path, "scales", trials, finished=True, final=None, metric=metric)
    spec = paths.load_spec()
    study, objective = report.open_study(paths, spec), report.Objective(spec.metric, spec.mode)
    for fig in (report.history_figure(study.trials, objective, spec.asha.horizon),
                report.curves_figure(study.trials, objective, spec.rungs(), spec.asha.horizon, best=None)):
        assert fig.layout.yaxis.type == scale and fig.layout.yaxis.title.text == objective.label


# ---- the figures --------------------------------------------------------------------------------

def test_plotlyjs_is_embedded_exactly_once_and_nothing_is_loaded_from_the_network(finished):
    _, page = finished
    bundle = plotly.offline.get_plotlyjs()
    assert page.count(bundle[:2000]) == 1
    assert page.count("* plotly.js v") == 1
    assert not re.search(r"<script[^>]+src=", page)
    assert figure_ids(page) == FIGURES


def test_each_figure_has_a_caption_saying_what_it_shows(finished):
    _, page = finished
    for key in ("history", "curves", "parallel", "importances", "slice", "final"):
        section = re.search(rf'<section id="{key}">(.*?)</section>', page, re.S).group(1)
        assert "<figcaption>" in section
    parallel = re.search(r'<section id="parallel">(.*?)</section>', page, re.S).group(1)
    assert "Only complete trials" in parallel


def test_too_few_complete_trials_says_so_in_place_of_importances(small):
    _, page = small
    assert "fig-importances" not in figure_ids(page)
    assert text_of(page, "importances-missing") == (
        "Importances need at least 5 complete trials (one more than the 4 searched settings); this study has 2.")
    assert {"fig-parallel", "fig-slice"} <= set(figure_ids(page))


def test_a_study_with_no_complete_trial_and_no_final_run_says_so(tmp_path):
    _, page = reported(tmp_path, "early", NO_COMPLETE, finished=False, final=None)
    assert figure_ids(page) == ["fig-history", "fig-curves"]
    for key in ("parallel", "slice"):
        assert text_of(page, f"{key}-missing").startswith("No trial has run the whole horizon yet")
    assert text_of(page, "final-missing") == "Final run not started."
    assert text_of(page, "header-best") == "none yet: no trial has run the whole horizon"
    assert text_of(page, "header-final") == "final run not started"


def test_learning_curves_mark_the_asha_rungs(finished):
    paths, _ = finished
    spec = paths.load_spec()
    study = report.open_study(paths, spec)
    fig = report.curves_figure(study.trials, report.Objective(spec.metric, spec.mode), spec.rungs(),
                               spec.asha.horizon, best=None)
    assert sorted(shape.x0 for shape in fig.layout.shapes) == spec.rungs() == [1, 2]
    assert len(fig.data) == len(FINISHED)  # one curve per trial


# ---- the table ----------------------------------------------------------------------------------

def test_the_table_lists_every_trial_with_its_state(finished):
    _, page = finished
    assert table_rows(page) == {n: t.state for n, t in enumerate(FINISHED)}
    assert "diverged: the training loss is not finite at epoch 2" in page


def test_a_running_study_is_read_from_optuna_db_alone(running):
    paths, page = running
    assert not paths.trials_csv.exists() and not paths.best.exists()
    assert table_rows(page) == {n: t.state for n, t in enumerate(RUNNING)}


# ---- reading and writing ------------------------------------------------------------------------

def test_the_same_study_gives_the_same_page(finished):
    paths, page = finished
    assert report.build_report(paths) == page


def test_the_report_leaves_optuna_db_untouched(tmp_path):
    paths = make_study(tmp_path, "ro", SMALL, finished=True, final=None)
    before = hashlib.sha256(paths.optuna_db.read_bytes()).hexdigest()
    files = sorted(p.name for p in paths.root.iterdir())
    report.write_report(paths)
    assert hashlib.sha256(paths.optuna_db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in paths.root.iterdir()) == sorted(files + ["report.html"])


def hold_exclusive_lock(db: Path, seconds: float) -> threading.Thread:
    """Another process's write to optuna.db, as SQLite sees it: an exclusive lock held for a while."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")

    def release() -> None:
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def test_a_study_whose_writer_holds_the_lock_for_a_moment_is_waited_for(tmp_path, monkeypatch):
    paths = make_study(tmp_path, "busy", SMALL, finished=True, final=None)
    expected = report.build_report(paths)
    monkeypatch.setattr(report, "LOCK_WAIT_S", 0.2)
    writer = hold_exclusive_lock(paths.optuna_db, seconds=1.5)
    try:
        assert report.build_report(paths) == expected
    finally:
        writer.join()


def test_a_study_locked_for_longer_than_the_patience_is_one_clear_error(tmp_path, monkeypatch):
    paths = make_study(tmp_path, "stuck", SMALL, finished=True, final=None)
    monkeypatch.setattr(report, "LOCK_WAIT_S", 0.2)
    monkeypatch.setattr(report, "LOCK_PATIENCE_S", 1.0)
    writer = hold_exclusive_lock(paths.optuna_db, seconds=3)
    try:
        with pytest.raises(report.ReportError, match=r"optuna.db: locked by another process for 1 s"):
            report.build_report(paths)
    finally:
        writer.join()


# ---- the CLI ------------------------------------------------------------------------------------

def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = report.main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_reports_the_study_whose_spec_changed_last(tmp_path, capsys):
    old = make_study(tmp_path, "old", SMALL, finished=True, final=None)
    new = make_study(tmp_path, "new", NO_COMPLETE, finished=False, final=None)
    os.utime(old.spec, (1_000_000_000, 1_000_000_000))
    code, out, _ = run_cli(capsys, "--results-dir", str(tmp_path))
    assert code == 0
    assert new.report.is_file() and not old.report.exists()
    assert str(new.report) in out


@pytest.mark.parametrize("case", ["no such study", "no spec.json", "spec.json not JSON", "optuna.db not a database",
                                  "no studies at all"])
def test_cli_bad_input_is_one_line_and_exit_2_and_writes_nothing(tmp_path, capsys, case):
    results = tmp_path / "results"
    results.mkdir()
    args = ["--results-dir", str(results)]
    if case == "no such study":
        make_study(results, "real", SMALL, finished=True, final=None)
        args += ["--study", "nope"]
    elif case == "no spec.json":
        paths = make_study(results, "bare", SMALL, finished=True, final=None)
        paths.spec.unlink()
        args += ["--study", "bare"]
    elif case == "spec.json not JSON":
        paths = make_study(results, "broken", SMALL, finished=True, final=None)
        paths.spec.write_text("{not json")
        args += ["--study", "broken"]
    elif case == "optuna.db not a database":
        paths = make_study(results, "garbage", SMALL, finished=True, final=None)
        paths.optuna_db.write_text("not a database")
        args += ["--study", "garbage"]
    before = sorted(results.rglob("*"))
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert sorted(results.rglob("*")) == before


def test_python_m_search_report_exits_2_on_an_unknown_study(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "search.report", "--study", "nope", "--results-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --study nope: no such study directory") and proc.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


# ---- in a browser -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_in_browser(finished):
    require_browser()
    return check_report_in_browser(finished[0].report, sort_by=["trial", VALUE])


@pytest.fixture(scope="module")
def running_in_browser(running, tmp_path_factory):
    require_browser()
    png = tmp_path_factory.mktemp("shots") / "running.png"
    return check_report_in_browser(running[0].report, screenshot=png, width=1000), png


def test_finished_report_loads_without_errors_or_network(finished_in_browser):
    assert finished_in_browser["errors"] == []
    assert finished_in_browser["requests"] == []


def test_finished_report_draws_every_figure(finished_in_browser):
    assert [f["id"] for f in finished_in_browser["figures"]] == FIGURES
    for fig in finished_in_browser["figures"]:
        assert fig["svg"] >= 1 and fig["traces"] >= 1 and fig["drawn"] >= 1 and fig["marks"] >= 1, fig


def test_the_table_in_the_browser_lists_every_trial(finished_in_browser):
    assert finished_in_browser["trials"] == [str(n) for n in range(len(FINISHED))]


def test_clicking_a_header_sorts_the_table_by_that_column(finished_in_browser):
    ascending, descending = finished_in_browser["sorted"][VALUE]
    values = [float(v) for v in ascending if v]
    assert values == sorted(values) and len(values) == 9 and ascending[-1] == ""  # the failed trial: no value, last
    assert [float(v) for v in descending if v] == sorted(values, reverse=True)
    assert finished_in_browser["sorted"]["trial"][1] == [str(n) for n in reversed(range(len(FINISHED)))]


def test_running_report_draws_what_it_has_and_says_what_it_lacks(running_in_browser):
    found, _ = running_in_browser
    assert found["errors"] == [] and found["requests"] == []
    assert [f["id"] for f in found["figures"]] == ["fig-final", "fig-final-run", "fig-history", "fig-curves",
                                                   "fig-parallel", "fig-slice"]
    assert all(f["svg"] >= 1 and f["drawn"] >= 1 for f in found["figures"]), found["figures"]
    assert found["missing"] == ["revalidation-missing", "importances-missing"]
    assert found["trials"] == [str(n) for n in range(len(RUNNING))]


def test_screenshot_is_the_whole_page_at_the_asked_width(running_in_browser):
    _, png = running_in_browser
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1000 and height > 2000  # the whole page, not the 900-pixel viewport


def test_the_final_figure_overlays_every_seed_with_their_mean_and_a_band_of_one_std(finished):
    paths, _ = finished
    fig = report.final_figure(report.load_final(paths, paths.load_spec()), best=None)
    names = [t.name for t in fig.data]
    assert names == ["seed 0", "seed 1", "seed 2", "mean +- std", "mean of 3 seeds"]
    mean, band = fig.data[4], fig.data[3]
    assert list(mean.x) == [1, 2, 3, 4] and mean.y[-1] == pytest.approx(46.0)
    assert band.y[3] == pytest.approx(47.0) and band.y[4] == pytest.approx(45.0)  # mean +- 1 point at epoch 4


def test_a_study_with_re_validation_off_says_the_best_single_value_chose(tmp_path):
    paths = make_study(tmp_path, "off", SMALL, finished=True, final=None)
    spec = paths.load_spec()
    paths.spec.write_text(json.dumps(spec.replace(selection=dataclasses.replace(spec.selection, revalidate_top=0))
                                     .to_dict()))
    page = report.write_report(paths).read_text()
    assert text_of(page, "revalidation-missing").startswith("Re-validation is off for this study (revalidate_top = 0)")


def test_a_diverged_final_seed_is_a_gap_and_the_mean_is_taken_over_the_runs_with_a_number(tmp_path):
    paths = make_study(tmp_path, "div", SMALL, finished=True, final="completed", seeds=3)
    metrics = paths.final_run(1) / "metrics.csv"
    rows = metrics.read_text().splitlines()
    rows[3] = ",".join("nan" if i == 5 else v for i, v in enumerate(rows[3].split(",")))  # epoch 3's eval_acc
    metrics.write_text("\n".join(rows[:4]) + "\n")  # ... and it stopped there
    fig = report.final_figure(report.load_final(paths, paths.load_spec()), best=None)
    mean = fig.data[4]
    assert list(mean.x) == [1, 2, 3, 4] and [int(n) for n in mean.text] == [3, 3, 2, 2]  # epoch 3: seeds 0, 2
    assert mean.y[2] == pytest.approx(48.0)  # (47 + 49) / 2
    assert "fig-final" in figure_ids(report.write_report(paths).read_text())  # the page draws it, gap and all


def test_a_study_from_before_final_seeds_shows_its_one_final_run(tmp_path):
    paths = make_study(tmp_path, "old", SMALL, finished=True, final="completed")
    for f in paths.final_run(0).iterdir():
        f.rename(paths.final / f.name)
    paths.final_run(0).rmdir()
    page = report.write_report(paths).read_text()
    assert text_of(page, "header-final").startswith("test accuracy 45.00% at the last epoch (4 of 4)")
    assert "fig-final" in figure_ids(page)


def test_the_baseline_is_drawn_beside_the_final_runs_and_the_header_compares_them_as_the_last_line_does(tmp_path):
    from report_fixture import write_final
    from search import results

    paths = make_study(tmp_path, "base", SMALL, finished=True, final="completed", seeds=2)
    for i, seed in enumerate((0, 1)):  # the seed recipe's runs: 3 and 2 points below the chosen ones
        write_final(paths.final_run(seed, baseline=True), epochs=4, run=4, status="completed", shift=-0.03 + 0.02 * i)
    summary = results.final_summary(paths, [0, 1], baseline=True)
    (paths.final / "summary.json").write_text(json.dumps(summary))
    final = report.load_final(paths, paths.load_spec())
    fig = report.final_figure(final, best=None)
    assert [t.name for t in fig.data] == ["seed 0", "seed 1", "mean +- std", "mean of 2 seeds",
                                          "seed recipe, seed 0", "seed recipe, seed 1", "seed recipe: mean of 2 seeds"]
    thin, thick = fig.data[4], fig.data[6]
    assert thin.line.width < thick.line.width and fig.data[5].line.width < thick.line.width
    assert list(thick.y) == pytest.approx([19.0, 32.0, 45.0, 43.0])  # its seeds 1 point below and above
    page = report.write_report(paths).read_text()
    # The study's last line's words: the seed recipe, its mean +- std, the paired difference and its interval.
    assert text_of(page, "header-final").endswith(results.comparison_text(summary))
    assert results.comparison_text(summary) == ("; the seed recipe: 43.00 +- 1.41% (+2.50 points, 95% CI -3.85 to "
                                                "+8.85, paired over 2 seeds)")
    assert "the baseline (the seed recipe's final runs): 2 runs (8 epochs, 16 s of run time" in text_of(page,
                                                                                                   "header-epochs")
    assert "final/baseline/seed-&lt;s&gt;/" in page or "final/baseline/seed-<s>/" in html.unescape(page)
