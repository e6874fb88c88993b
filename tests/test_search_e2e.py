"""The smoke study end to end, as a user runs a study: `python -m search.run --study smoke` (the README's demo is the
larger `demo` study, which the tests do not run)."""
import csv
import html
import ipaddress
import json
import re
import statistics
import subprocess

import pytest
from optuna.trial import TrialState

from conftest import REPO, read_trials
from recipe.train import main as train_main
from report_fixture import check_report_in_browser, require_browser
from search import study as studies

SPEC = studies.load("smoke")


def optuna_trials(run):
    return read_trials(run.root / "optuna.db")


def better(value: float) -> float:
    """A sort key that puts the better value of the study's objective first (the smoke study minimises its loss)."""
    return -value if SPEC.mode == "max" else value


def with_baseline(run) -> bool:
    """Whether the study trained the seed recipe beside its choice: it asks for it (smoke.toml), unless it chose the
    seed recipe (which trial it chose depends on the CPU's kernels)."""
    return json.loads((run.root / "best.json").read_text())["params"] != SPEC.seed_params()


def test_the_smoke_study_runs_to_the_end(smoke_study):
    assert smoke_study.returncode == 0, smoke_study.stderr[-3000:]
    for name in ("optuna.db", "revalidation.json", "best.json", "trials.csv", "spec.json", "report.html",
                 "final/summary.json", "final/seed-0/summary.json", "final/seed-1/summary.json"):
        assert (smoke_study.root / name).exists(), name
    baseline = [f"final/baseline/seed-{s}/summary.json" for s in (0, 1)]
    assert all((smoke_study.root / name).exists() == with_baseline(smoke_study) for name in baseline)


def revalidation(run):
    return json.loads((run.root / "revalidation.json").read_text())


def test_the_two_best_complete_trials_are_re_validated_with_another_seed_and_the_best_mean_chosen(smoke_study):
    record = revalidation(smoke_study)
    complete = sorted((t for t in optuna_trials(smoke_study) if t.state == TrialState.COMPLETE),
                      key=lambda t: (better(t.value), t.number))
    # ASHA let 2 to 5 trials run to the end with every kernel set tried (trial 0, the first at every rung when trials
    # run one at a time, always): the top 2 of them are re-validated.
    assert SPEC.selection.revalidate_top == 2 and len(complete) >= 2
    top = complete[:2]
    assert [r["trial_id"] for r in record["trials"]] == [t.number for t in top]
    assert [(r["trial_id"], r["seed"], r["status"], r["epochs"]) for r in record["runs"]] == [
        (t.number, SPEC.seed + 1, "completed", SPEC.asha.horizon) for t in top]
    for r, t in zip(record["trials"], top):
        again = next(x["value"] for x in record["runs"] if x["trial_id"] == t.number)
        assert r["values"] == [t.value, again] and r["mean_value"] == pytest.approx((t.value + again) / 2)
    # The best mean; a tie goes to the trial the search ranked higher.
    chosen = min(record["trials"], key=lambda r: (better(r["mean_value"]), record["trials"].index(r)))
    assert record["chosen"] == chosen["trial_id"] and record["best_single"] == top[0].number
    assert record["changed"] == (chosen["trial_id"] != top[0].number)
    assert "re-validation of trial" in smoke_study.stdout and "re-validation: trial" in smoke_study.stdout


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
    # Trial 0 is the first at every rung (one trial at a time): it runs to the end. The sampler's seeded draw for
    # trial 3 (lr 0.70) diverges, its loss far above the others' at the first rung (84 to 88,000 against 5-21): stopped there.
    states = {t.state for t in trials}
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states, "ASHA stopped some trials, not all"


def test_the_seed_recipe_is_trial_0(smoke_study):
    assert optuna_trials(smoke_study)[0].params == SPEC.seed_params()


def test_best_json_is_the_trial_re_validation_chose_with_every_runs_value(smoke_study):
    best = json.loads((smoke_study.root / "best.json").read_text())
    record = revalidation(smoke_study)
    top = optuna_trials(smoke_study)[record["chosen"]]
    mine = next(r for r in record["trials"] if r["trial_id"] == top.number)
    assert best["trial_id"] == top.number and best["value"] == top.value
    assert best["mean_value"] == mine["mean_value"] and best["values"] == mine["values"] and best["revalidated"]
    assert best["params"] == top.params
    assert best["final_config"] == SPEC.final_config(top.params).to_dict() | {
        "data_dir": best["final_config"]["data_dir"]}


def test_trials_csv_has_a_row_per_trial_matching_the_optuna_study(smoke_study):
    with open(smoke_study.root / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    trials = optuna_trials(smoke_study)
    assert [int(r["trial_id"]) for r in rows] == [t.number for t in trials]
    revalidated = {r["trial_id"]: r for r in revalidation(smoke_study)["trials"]}
    for row, t in zip(rows, trials):
        again = revalidated.get(t.number)
        assert json.loads(row["revalidated_values"] or "null") == (again["values"][1:] if again else None)
        assert (float(row["mean_value"]) if row["mean_value"] else None) == (again["mean_value"] if again else None)
        assert row["state"] == {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}[t.state]
        assert int(row["epochs"]) == t.user_attrs["epochs"]
        assert float(row["value"]) == pytest.approx(t.value)
        assert float(row["lr"]) == pytest.approx(t.params["lr"])


def test_two_final_runs_train_the_chosen_settings_with_seeds_0_and_1_on_the_whole_training_set(smoke_study):
    best = json.loads((smoke_study.root / "best.json").read_text())
    final = smoke_study.root / "final"
    assert sorted(d.name for d in final.iterdir() if d.is_dir()) == ["baseline"] * with_baseline(smoke_study) + [
        "seed-0", "seed-1"]
    for seed in (0, 1):
        run = final / f"seed-{seed}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["epochs_run"] == 4
        assert summary["eval_set"] == "test" and summary["train_images"] == SPEC.final["subset"]
        config = json.loads((run / "config.json").read_text())
        # Another seed of initialisation, order and augmentation; the same images.
        assert config == best["final_config"] | {"device": "cpu", "seed": seed, "split_seed": 0}
        assert (run / "checkpoints" / "best.pt").exists() and (run / "curves.html").exists()


def test_final_summary_aggregates_the_seeds_and_the_last_line_says_mean_and_std(smoke_study):
    summary = json.loads((smoke_study.root / "final" / "summary.json").read_text())
    accs = [json.loads((smoke_study.root / "final" / f"seed-{s}" / "summary.json").read_text())["final_eval_acc"]
            for s in (0, 1)]
    assert summary["status"] == "completed" and summary["seeds"] == [0, 1] and summary["n"] == 2
    assert [r["final_eval_acc"] for r in summary["runs"]] == accs
    assert summary["mean_final_eval_acc"] == pytest.approx(statistics.fmean(accs))
    assert summary["std_final_eval_acc"] == pytest.approx(statistics.stdev(accs))
    assert smoke_study.stdout.strip().splitlines()[-1].startswith(
        f"final: {100 * statistics.fmean(accs):.2f} +- {100 * statistics.stdev(accs):.2f}% test accuracy over 2 seeds; ")


def test_the_seed_recipe_is_trained_beside_the_chosen_settings_on_the_same_seeds_and_the_last_line_compares(smoke_study):
    summary = json.loads((smoke_study.root / "final" / "summary.json").read_text())
    last = smoke_study.stdout.strip().splitlines()[-1]
    if not with_baseline(smoke_study):  # the seed recipe chosen: nothing to compare it with
        assert summary["baseline"] is None and summary["baseline_skipped"]
        assert "baseline: none; the chosen settings are the seed recipe's own: no baseline to train" in smoke_study.stdout
        assert last.endswith("; the chosen settings are the seed recipe's own: no baseline to train")
        return
    best = json.loads((smoke_study.root / "best.json").read_text())
    runs = {s: smoke_study.root / "final" / "baseline" / f"seed-{s}" for s in (0, 1)}
    for seed, run in runs.items():
        # The seed recipe's settings in the final runs' recipe: another seed, the same images.
        config = json.loads((run / "config.json").read_text())
        assert config == best["final_config"] | SPEC.seed_params() | {"device": "cpu", "seed": seed, "split_seed": 0}
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    accs = [json.loads((runs[s] / "summary.json").read_text())["final_eval_acc"] for s in (0, 1)]
    chosen = [r["final_eval_acc"] for r in summary["runs"]]
    assert [r["final_eval_acc"] for r in summary["baseline"]["runs"]] == accs
    assert summary["baseline"]["mean_final_eval_acc"] == pytest.approx(statistics.fmean(accs))
    differences = [c - b for c, b in zip(chosen, accs)]
    assert summary["difference"]["values"] == pytest.approx(differences) and summary["difference"]["n"] == 2
    mean, std = statistics.fmean(differences), statistics.stdev(differences)
    assert last.endswith(
        f"; the seed recipe: {100 * statistics.fmean(accs):.2f} +- {100 * statistics.stdev(accs):.2f}% "
        f"({100 * mean:+.2f} points, 95% CI {100 * (mean - 12.7062 * std / 2 ** 0.5):+.2f} to "
        f"{100 * (mean + 12.7062 * std / 2 ** 0.5):+.2f}, paired over 2 seeds)")
    assert "final epoch 4/4 (seed 0, baseline)" in smoke_study.stdout


def test_a_finished_study_keeps_the_final_runs_weights_and_no_tune_checkpoints(smoke_study):
    root = smoke_study.root
    trial_dirs = [d for d in (root / "tune").iterdir() if d.is_dir() and (d / "result.json").exists()]
    assert len(trial_dirs) == SPEC.trials  # every trial's own record is still there ...
    assert not list(root.rglob("checkpoint_*"))  # ... but not its ~170 MB (at full width) checkpoint
    assert all((root / "final" / f"seed-{s}" / "checkpoints" / "last.pt").is_file() for s in (0, 1))
    assert all((root / "final" / "baseline" / f"seed-{s}" / "checkpoints" / "last.pt").is_file()
               == with_baseline(smoke_study) for s in (0, 1))


def test_each_final_run_names_the_git_commit_it_ran_from(smoke_study):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert len(head) == 40, "the tests run in a git checkout"
    for seed in (0, 1):
        assert json.loads((smoke_study.root / "final" / f"seed-{seed}" / "summary.json").read_text())["git_commit"] == head


def test_tunes_directories_hold_each_trials_records_and_no_tensorboard_files(smoke_study):
    for name in ("tune", "revalidate-tune", "final-tune"):
        experiment = smoke_study.root / name
        assert list(experiment.glob("*/result.json")) and list(experiment.glob("*/progress.csv")), name
        assert not list(experiment.rglob("events.out.tfevents*")), name


@pytest.mark.parametrize("which, seed", [("best", None), ("baseline", 1)])
def test_from_study_best_or_baseline_reruns_a_final_run_without_ray_seed_0_unless_told(smoke_study, tmp_path, capsys,
                                                                                       no_ray, which, seed):
    out = tmp_path / "again"
    code = train_main(["--from-study", which, "--study", "smoke", "--results-dir", str(smoke_study.results),
                       "--epochs", "1", "--out", str(out), *(["--seed", str(seed)] if seed is not None else [])])
    assert code == 0
    # The study's run of that seed as it trained it; where it chose the seed recipe it trained no baseline: its
    # chosen runs have the same settings.
    run = f"seed-{seed or 0}" if which == "best" or not with_baseline(smoke_study) else f"baseline/seed-{seed}"
    final = json.loads((smoke_study.root / "final" / run / "config.json").read_text())
    assert json.loads((out / "config.json").read_text()) == final | {"epochs": 1}
    best = json.loads((smoke_study.root / "best.json").read_text())
    assert (f"best trial {best['trial_id']}" if which == "best" else "the seed recipe (the baseline, trial 0's "
            "settings)") in capsys.readouterr().out


def test_from_study_trains_a_given_trials_settings_with_the_whole_final_config(smoke_study, tmp_path):
    best = json.loads((smoke_study.root / "best.json").read_text())
    trial = next(t for t in optuna_trials(smoke_study) if t.params != best["params"])  # not the best's settings
    out = tmp_path / "t1"
    assert train_main(["--from-study", str(trial.number), "--results-dir", str(smoke_study.results), "--epochs", "1",
                       "--subset", "200", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in trial.params} == pytest.approx(trial.params)
    # Every other setting is the final run's (its data, width, evaluation set ...), but for the flags given.
    others = {k: v for k, v in config.items() if k not in trial.params}
    assert others == {k: v for k, v in best["final_config"].items() if k not in trial.params} | {"epochs": 1,
                                                                                                   "subset": 200}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_set"] == "test" and summary["train_images"] == 200


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
    assert "final epoch 4/4 (seed 0)" in out and "final epoch 4/4 (seed 1)" in out
    for noise in ("Configuration for experiment", "View detailed results", "Trial status", "TensorBoard"):
        assert noise not in out + smoke_study.stderr


def test_the_smoke_study_report_renders_fully_in_a_browser(smoke_study):
    require_browser()
    found = check_report_in_browser(smoke_study.root / "report.html")
    assert found["errors"] == [] and found["requests"] == []
    ids = [f["id"] for f in found["figures"]]
    assert {"fig-final", "fig-final-run", "fig-revalidation", "fig-history", "fig-curves", "fig-parallel",
            "fig-slice"} <= set(ids)
    final = next(f for f in found["figures"] if f["id"] == "fig-final")
    # Seeds 0 and 1, the band of one std and their mean; the baseline's seeds 0 and 1 and their mean.
    assert final["traces"] == 4 + 3 * with_baseline(smoke_study)
    assert all(f["svg"] >= 1 and f["drawn"] >= 1 for f in found["figures"]), found["figures"]
    # Importances need five complete trials; where there are fewer the page says so instead.
    complete = sum(t.state == TrialState.COMPLETE for t in optuna_trials(smoke_study))
    assert ("fig-importances" in ids) == (complete >= 5)
    assert ("importances-missing" in found["missing"]) == (complete < 5)
    assert found["trials"] == [str(n) for n in range(SPEC.trials)]


def header_fact(page: str, key: str) -> str:
    """The text of one fact in the report's header (header-trials, header-final ...)."""
    match = re.search(rf'<dd id="header-{key}">(.*?)</dd>', page, re.S)
    assert match, f"no header-{key} in the report"
    return html.unescape(match.group(1))


def test_the_report_can_be_written_while_the_study_runs(smoke_study):
    midway = smoke_study.report_midway
    assert midway is not None and midway.returncode == 0, midway and midway.stderr
    page = smoke_study.report_while_running.read_text()
    # Written after a trial ended, with the search not over: fewer trials ended than planned, no final run.
    trials = header_fact(page, "trials")
    ended = sum(int(n) for n in re.findall(r"(\d+) (?:complete|pruned|failed)", trials))
    assert re.match(rf"\d+ of {SPEC.trials} planned: ", trials), trials
    assert 1 <= ended < SPEC.trials, trials
    assert header_fact(page, "final") == "final run not started"
