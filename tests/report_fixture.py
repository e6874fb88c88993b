"""Fake study directories for the report's tests, built with the Optuna API the search uses.

make_study() writes what results/<study>/ holds at some point of a study's life: spec.json
and optuna.db always; trials.csv and best.json once the search has ended; revalidation.json
where asked; final/seed-<s>/ (and final/summary.json once they ended) as far as the final runs
got. The trials are given as FakeTrial rows: a state, a validation curve (one value per epoch)
and, optionally, the settings.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Sequence

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from search import results
from search import study as study_mod
from search.study import SEARCHED, StudyPaths, StudySpec

STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL,
          "running": TrialState.RUNNING}
START = datetime(2025, 3, 1, 9, 0, 0)
TRIAL_SPACING_S = 60  # trial n starts n minutes after the study
EPOCH_S = 30  # every fake epoch takes half a minute


@dataclass
class FakeTrial:
    state: str  # complete, pruned, failed or running
    curve: list[float]  # the validation metric of each epoch it ran
    params: dict[str, float] | None = None  # None: trial 0 gets the seed recipe, others a seeded draw
    reason: str | None = None  # why a failed trial failed
    extra: dict = field(default_factory=dict)


def spec_for(name: str, trials: int, metric: str = "eval_acc") -> StudySpec:
    """The smoke study (horizon 4, ASHA rungs at epochs 1 and 2), renamed."""
    return study_mod.load("smoke").replace(name=name, trials=trials, metric=metric)


def draw_params(spec: StudySpec, number: int) -> dict[str, float]:
    if number == 0:
        return spec.seed_params()
    rng = random.Random(number)
    out = {}
    for name in SEARCHED:
        p = spec.space[name]
        if p.log:
            out[name] = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
        else:
            out[name] = rng.uniform(p.low, p.high)
    return out


def trial_times(number: int, epochs: int) -> tuple[datetime, datetime]:
    start = START + timedelta(seconds=TRIAL_SPACING_S * number)
    return start, start + timedelta(seconds=EPOCH_S * epochs)


def make_study(results_dir: Path, name: str, trials: Sequence[FakeTrial], *, finished: bool,
               final: str | None, metric: str = "eval_acc", planned: int | None = None, seeds: int = 1,
               revalidated: dict[int, float] | None = None) -> StudyPaths:
    """A results/<name>/ directory; final is None (no final run), 'running' (2 of 4 epochs) or 'completed'.

    seeds: final runs (final/seed-<s>/, their accuracy 1 point apart). revalidated: {trial: its re-run's value}
    for the top trials, which writes revalidation.json and makes best.json the trial it chooses.
    """
    spec = spec_for(name, planned or len(trials), metric)
    paths = StudyPaths(Path(results_dir) / name)
    paths.root.mkdir(parents=True)
    paths.spec.write_text(json.dumps(spec.to_dict(), indent=2))
    direction = "maximize" if spec.mode == "max" else "minimize"
    study = optuna.create_study(study_name=name, direction=direction,
                                storage=optuna.storages.RDBStorage(paths.storage_url))
    distributions = {n: FloatDistribution(p.low, p.high, log=p.log) for n, p in spec.space.items()}
    rows = []
    for number, fake in enumerate(trials):
        params = fake.params or draw_params(spec, number)
        state = STATES[fake.state]
        epochs = len(fake.curve)
        attrs = {"ray_trial_id": f"t{number:05d}"}
        if state != TrialState.RUNNING:
            attrs["epochs"] = epochs
        if fake.reason:
            attrs["reason"] = fake.reason
        value = fake.curve[-1] if state in (TrialState.COMPLETE, TrialState.PRUNED) else None
        trial = optuna.trial.create_trial(
            state=state, value=value, params=params, distributions=distributions, user_attrs=attrs,
            intermediate_values={epoch: v for epoch, v in enumerate(fake.curve, start=1)},
        )
        trial.datetime_start, end = trial_times(number, epochs)
        trial.datetime_complete = None if state == TrialState.RUNNING else end
        study.add_trial(trial)
        rows.append({"trial_id": number, "state": fake.state, "epochs": epochs, "value": value, **params,
                     "time_s": EPOCH_S * epochs, "ray_trial_id": attrs["ray_trial_id"], "reason": fake.reason or ""})
    if finished:
        write_trials_csv(paths.trials_csv, rows, spec)
        complete = [r for r in rows if r["state"] == "complete"]
        best = (max if spec.mode == "max" else min)(complete, key=lambda r: r["value"])
        params = {k: best[k] for k in SEARCHED}
        paths.best.write_text(json.dumps({
            "study": name, "trial_id": best["trial_id"], "ray_trial_id": best["ray_trial_id"], "params": params,
            "value": best["value"], "metric": spec.metric, "epochs": best["epochs"],
            "final_config": spec.final_config(params).to_dict(),
        }, indent=2))
    if revalidated is not None:
        write_revalidation(paths, study, spec, revalidated)
    if final is not None:
        for i, seed in enumerate(range(spec.seed, spec.seed + seeds)):
            write_final(paths.final_run(seed), epochs=4, run=2 if final == "running" else 4, status=final, shift=0.01 * i)
        if final != "running":
            summary = results.final_summary(paths, list(range(spec.seed, spec.seed + seeds)))
            (paths.final / "summary.json").write_text(json.dumps(summary))
    return paths


def write_revalidation(paths: StudyPaths, study: optuna.Study, spec: StudySpec, reruns: dict[int, float]) -> None:
    """revalidation.json as the driver writes it: `reruns` maps each top trial to its re-run's value."""
    spec = spec.replace(selection=dataclasses.replace(spec.selection, revalidate_top=len(reruns)))
    runs = [{"trial_id": n, "seed": spec.revalidation_seed(), "status": "completed", "value": v, "epochs": 4,
             "time_s": 120.0, "ended": 1_700_000_000 + 60 * i, "reason": None, "ray_trial_id": f"r{n}"}
            for i, (n, v) in enumerate(reruns.items())]
    record = results.revalidation_record(study, spec, runs)
    paths.revalidation.write_text(json.dumps(record))
    best = json.loads(paths.best.read_text())
    chosen = study.trials[record["chosen"]]
    best.update(results.best_record(spec, chosen, record))
    paths.best.write_text(json.dumps(best))


def write_trials_csv(path: Path, rows: list[dict], spec: StudySpec) -> None:
    best, better = None, (max if spec.mode == "max" else min)
    for row in rows:
        if row["state"] == "complete":
            best = row["value"] if best is None else better(best, row["value"])
        row["best_value"] = best
    columns = ["trial_id", "state", "epochs", "value", "best_value", "revalidated_values", "mean_value", *SEARCHED,
               "time_s", "ray_trial_id", "reason"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


FINAL_TEST_ACC = [0.21, 0.34, 0.47, 0.45]  # the final run's test accuracy per epoch: best at epoch 3


def write_final(run_dir: Path, epochs: int, run: int, status: str, shift: float = 0.0) -> None:
    """A recipe run directory (metrics.csv, summary.json) that has run `run` of `epochs` epochs."""
    run_dir.mkdir(parents=True)
    history = [{"epoch": e, "lr": 0.1 * (1 - e / (epochs + 1)), "train_loss": 4.0 - 0.5 * e, "train_acc": 0.1 * e,
                "eval_loss": 3.9 - 0.4 * e, "eval_acc": round(FINAL_TEST_ACC[e - 1] + shift, 4), "epoch_time_s": 2.0,
                "images_per_s": 750.0} for e in range(1, run + 1)]
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    accs = [h["eval_acc"] for h in history]
    best_epoch = accs.index(max(accs)) + 1
    (run_dir / "summary.json").write_text(json.dumps({
        "status": status, "epochs": epochs, "epochs_run": run, "eval_set": "test", "final_eval_acc": accs[-1],
        "final_eval_loss": history[-1]["eval_loss"], "best_eval_acc": max(accs), "best_epoch": best_epoch,
        "wall_time_s": 2.0 * run,
    }))


# The studies the tests use. Horizon 4, rungs at epochs 1 and 2.
FINISHED = [
    FakeTrial("complete", [0.10, 0.20, 0.30, 0.40]),  # 0: the seed recipe
    FakeTrial("pruned", [0.05]),
    FakeTrial("complete", [0.12, 0.25, 0.36, 0.52]),  # 2: the best
    FakeTrial("pruned", [0.04, 0.08]),
    FakeTrial("failed", [0.02, float("nan")], reason="diverged: the training loss is not finite at epoch 2"),
    FakeTrial("complete", [0.11, 0.22, 0.31, 0.38]),
    FakeTrial("pruned", [0.03]),
    FakeTrial("complete", [0.09, 0.21, 0.33, 0.45]),
    FakeTrial("complete", [0.10, 0.19, 0.28, 0.35]),
    FakeTrial("pruned", [0.06, 0.15]),
]
# Epochs run: complete 5 x 4 + pruned (1 + 2 + 1 + 2) + failed 2 = 28. Without early stopping:
# complete and pruned 9 x 4 + failed 2 = 38, so 10 of 38 epochs (26.3%) saved.

RUNNING = [
    FakeTrial("complete", [0.10, 0.20, 0.30, 0.40]),
    FakeTrial("pruned", [0.05]),
    FakeTrial("running", [0.12, 0.25]),
    FakeTrial("running", [0.08]),
    FakeTrial("running", []),  # just started: nothing reported yet
]

SMALL = [  # two complete trials: too few for importances, enough for parallel coordinates and slices
    FakeTrial("complete", [0.10, 0.20, 0.30, 0.40]),
    FakeTrial("pruned", [0.05]),
    FakeTrial("complete", [0.12, 0.25, 0.36, 0.52]),
    FakeTrial("pruned", [0.04, 0.08]),
]

NO_COMPLETE = [  # nothing has reached the horizon yet
    FakeTrial("pruned", [0.05]),
    FakeTrial("running", [0.12, 0.25]),
]


# ---- opening a report in headless Chromium ------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium package; playwright's own browsers are not used
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

# For every Plotly div: its SVG layers, its traces and the marks drawn for them.
FIGURES_JS = """() => Array.from(document.querySelectorAll("div.plotly-graph-div")).map(gd => ({
  id: gd.id,
  svg: gd.querySelectorAll(".main-svg").length,
  traces: (gd.data || []).length,
  drawn: gd.querySelectorAll("g.trace").length,
  marks: gd.querySelectorAll("path.point, path.js-line, g.trace path.surface, g.bars path, rect.bg").length,
  title: ((gd.layout || {}).title || {}).text || "",
}))"""
COLUMN_JS = """(col) => Array.from(document.querySelectorAll("#trials tbody tr"))
  .map(tr => tr.cells[col].textContent.trim())"""


def browser_missing() -> str | None:
    """Why the browser checks cannot run here, or None if they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    return None


def require_browser() -> None:
    """Skips where Chromium or playwright is missing, unless CIFAR100_HPO_REQUIRE_BROWSER=1 (CI) makes it fail."""
    why = browser_missing()
    if why:
        if os.environ.get("CIFAR100_HPO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CIFAR100_HPO_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)


def _open(playwright, html_path: Path, width: int = 1280):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": width, "height": 900})
    return browser, page


def _wait_for_plots(page, timeout_ms: int) -> None:
    page.wait_for_function(
        """() => Array.from(document.querySelectorAll("div.plotly-graph-div"))
                  .every(gd => gd.querySelector(".main-svg") !== null)""", timeout=timeout_ms)


def check_report_in_browser(html_path: str | Path, sort_by: Sequence[str] = (), screenshot: str | Path | None = None,
                            width: int = 1280, timeout_ms: int = 30_000) -> dict:
    """Open a report in headless Chromium and say what rendered.

    Returns {"errors": uncaught exceptions and console errors, "requests": URLs fetched that are
    not local files, "figures": [{id, svg, traces, drawn, marks, title}] per Plotly div,
    "missing": ids of the "too few data" notes, "headers" and "trials": the table's column
    headers and its trial column in page order, "sorted": {header: (column after one click,
    after a second click)} for each header in sort_by}. With `screenshot`, a full-page PNG of
    the page as loaded (before any sorting) is written there.
    """
    from playwright.sync_api import sync_playwright

    html_path = Path(html_path).resolve()
    found: dict = {"errors": [], "requests": []}
    with sync_playwright() as p:
        browser, page = _open(p, html_path, width)
        try:
            page.on("pageerror", lambda e: found["errors"].append(f"pageerror: {e}"))
            page.on("console", lambda m: found["errors"].append(f"console.{m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("request", lambda r: None if r.url.startswith(LOCAL_SCHEMES) else found["requests"].append(r.url))
            page.goto(html_path.as_uri(), wait_until="load")
            _wait_for_plots(page, timeout_ms)
            found["figures"] = page.evaluate(FIGURES_JS)
            if screenshot is not None:
                page.wait_for_timeout(300)  # let Plotly's transitions settle
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            found["missing"] = page.eval_on_selector_all(".missing", "els => els.map(e => e.id)")
            headers = page.eval_on_selector_all("#trials thead th", "ths => ths.map(th => th.textContent.trim())")
            found["headers"] = headers
            found["trials"] = page.evaluate(COLUMN_JS, 0) if headers else []
            found["sorted"] = {}
            for header in sort_by:
                col = headers.index(header)
                th = page.locator("#trials thead th").nth(col)
                th.click()
                ascending = page.evaluate(COLUMN_JS, col)
                th.click()
                found["sorted"][header] = (ascending, page.evaluate(COLUMN_JS, col))
        finally:
            browser.close()
    return found


def screenshot_report(html_path: str | Path, png_path: str | Path, width: int = 1280) -> Path:
    """A full-page PNG of a report as Chromium renders it (for the README)."""
    check_report_in_browser(html_path, screenshot=png_path, width=width)
    return Path(png_path)
