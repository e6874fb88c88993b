"""The smoke study end to end, as a user runs it: `python -m search.run --study smoke`."""
import csv
import ipaddress
import json

import pytest
from optuna.trial import TrialState

from conftest import read_trials
from recipe.train import main as train_main
from report_fixture import check_report_in_browser, require_browser
from search import study as studies

SPEC = studies.load("smoke")


def optuna_trials(run):
    return read_trials(run.root / "optuna.db")


def test_the_smoke_study_runs_to_the_end(smoke_study):
    assert smoke_study.returncode == 0, smoke_study.stderr[-3000:]
    for name in ("optuna.db", "best.json", "trials.csv", "spec.json", "report.html", "final/summary.json"):
        assert (smoke_study.root / name).exists(), name


def test_every_trial_is_complete_pruned_or_failed_with_every_epoch_recorded(smoke_study):
    trials = optuna_trials(smoke_study)
    assert len(trials) == SPEC.trials
    horizon = SPEC.asha.horizon
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), (t.number, t.state, t.user_attrs)
        epochs = t.user_attrs["epochs"]
        assert sorted(t.intermediate_values) == list(range(1, epochs + 1))
        assert t.value == t.intermediate_values[epochs]
        if t.state == TrialState.COMPLETE:
            assert epochs == horizon
        else:  # ASHA stops trials at its rungs only
            assert epochs in SPEC.rungs()
    states = {t.state for t in trials}
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states, "ASHA stopped some trials, not all"


def test_the_seed_recipe_is_trial_0(smoke_study):
    assert optuna_trials(smoke_study)[0].params == SPEC.seed_params()


def test_best_json_is_the_best_trial_that_ran_the_whole_horizon(smoke_study):
    best = json.loads((smoke_study.root / "best.json").read_text())
    complete = [t for t in optuna_trials(smoke_study) if t.state == TrialState.COMPLETE]
    top = max(complete, key=lambda t: t.value)
    assert best["trial_id"] == top.number and best["value"] == top.value
    assert best["params"] == top.params
    assert best["final_config"] == SPEC.final_config(top.params).to_dict() | {
        "data_dir": best["final_config"]["data_dir"]}


def test_trials_csv_has_a_row_per_trial_matching_the_optuna_study(smoke_study):
    with open(smoke_study.root / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    trials = optuna_trials(smoke_study)
    assert [int(r["trial_id"]) for r in rows] == [t.number for t in trials]
    for row, t in zip(rows, trials):
        assert row["state"] == {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}[t.state]
        assert int(row["epochs"]) == t.user_attrs["epochs"]
        assert float(row["value"]) == pytest.approx(t.value)
        assert float(row["lr"]) == pytest.approx(t.params["lr"])


def test_the_final_run_trains_the_best_settings_on_the_whole_training_set_against_the_test_set(smoke_study):
    best = json.loads((smoke_study.root / "best.json").read_text())
    final = smoke_study.root / "final"
    summary = json.loads((final / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 4
    assert summary["eval_set"] == "test" and summary["train_images"] == 600
    config = json.loads((final / "config.json").read_text())
    assert config == best["final_config"] | {"device": "cpu"}
    assert (final / "checkpoints" / "best.pt").exists() and (final / "curves.html").exists()


def test_a_finished_study_keeps_the_final_runs_weights_and_no_tune_checkpoints(smoke_study):
    root = smoke_study.root
    trial_dirs = [d for d in (root / "tune").iterdir() if d.is_dir() and (d / "result.json").exists()]
    assert len(trial_dirs) == SPEC.trials  # every trial's own record is still there ...
    assert not list(root.rglob("checkpoint_*"))  # ... but not its ~170 MB (at full width) checkpoint
    assert (root / "final" / "checkpoints" / "last.pt").is_file()


def test_from_study_best_reruns_the_final_run_without_ray(smoke_study, tmp_path, capsys):
    out = tmp_path / "again"
    code = train_main(["--from-study", "best", "--study", "smoke", "--results-dir", str(smoke_study.results),
                       "--epochs", "1", "--out", str(out)])
    assert code == 0
    final = json.loads((smoke_study.root / "final" / "config.json").read_text())
    assert json.loads((out / "config.json").read_text()) == final | {"epochs": 1}
    best = json.loads((smoke_study.root / "best.json").read_text())
    assert f"best trial {best['trial_id']}" in capsys.readouterr().out


def test_from_study_takes_a_given_trials_settings(smoke_study, tmp_path):
    trial = optuna_trials(smoke_study)[1]
    out = tmp_path / "t1"
    assert train_main(["--from-study", "1", "--results-dir", str(smoke_study.results), "--epochs", "1",
                       "--subset", "200", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in trial.params} == pytest.approx(trial.params)


def test_from_study_with_an_unknown_trial_is_one_clear_error(smoke_study, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--from-study", "99", "--results-dir", str(smoke_study.results), "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "no trial '99'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_a_local_study_listens_on_loopback_only(smoke_study):
    if not smoke_study.isolated:
        pytest.skip("needs `unshare -n` (root) to give the study a non-loopback address to avoid")
    assert smoke_study.listening, "the study's Ray was seen listening (the check itself works)"
    outside = {s for s in smoke_study.listening if not ipaddress.ip_address(s[0]).is_loopback}
    assert not outside, f"listening beyond loopback: {sorted(outside)}"


def test_the_live_view_is_compact_and_free_of_ray_noise(smoke_study):
    out = smoke_study.stdout
    assert "trial 0 started: lr 0.1, wd 0.0005, dropout 0.200, smoothing 0.100" in out
    assert " pruned: stopped by ASHA at epoch " in out
    assert "optuna-dashboard sqlite:///" in out
    assert "final epoch 4/4" in out
    for noise in ("Configuration for experiment", "View detailed results", "Trial status", "TensorBoard"):
        assert noise not in out + smoke_study.stderr


def test_the_smoke_study_report_renders_fully_in_a_browser(smoke_study):
    require_browser()
    found = check_report_in_browser(smoke_study.root / "report.html")
    assert found["errors"] == [] and found["requests"] == []
    ids = [f["id"] for f in found["figures"]]
    assert {"fig-history", "fig-curves", "fig-parallel", "fig-slice", "fig-final"} <= set(ids)
    assert all(f["svg"] >= 1 and f["drawn"] >= 1 for f in found["figures"]), found["figures"]
    # Importances need five complete trials; where there are fewer the page says so instead.
    complete = sum(t.state == TrialState.COMPLETE for t in optuna_trials(smoke_study))
    assert ("fig-importances" in ids) == (complete >= 5)
    assert ("importances-missing" in found["missing"]) == (complete < 5)
    assert found["trials"] == [str(n) for n in range(SPEC.trials)]


def test_the_report_can_be_written_while_the_study_runs(smoke_study):
    midway = smoke_study.report_midway
    assert midway is not None and midway.returncode == 0, midway and midway.stderr
    page = smoke_study.report_while_running.read_text()
    assert "running" in page and "final run not started" in page
    assert f"of {SPEC.trials} planned" in page
