"""The study report: python -m search.report writes results/<study>/report.html.

One self-contained page (plotly.js embedded once; it opens offline) built from the study's
results directory alone: spec.json, optuna.db (the source of truth for trials, opened
read-only), revalidation.json once re-validation has chosen, and final/ (a run directory per
seed, the baseline's beside them, and their summary.json) as far as the final runs got. It works on a study that is still running:
trials.csv and best.json are not needed. The same files give the same page, byte for byte. A damaged
final/summary.json or trials.csv is rebuilt from its sources; a damaged spec.json or revalidation.json is a
ReportError (search.record).
"""
from __future__ import annotations

import html
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote

import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.offline
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from recipe.checkpoint import write_text
from recipe.cli import Parser, fail
from recipe.config import RecipeError
from recipe.curves import run_figure
from search.record import final_seeds_on_disk, load_final_summary, load_revalidation, read_run_record, trial_states
from search.results import STATES, chosen_trial, comparison_text, trials_frame
from search.study import SEARCHED, StudyPaths, StudySpec

# fANOVA fits a forest to (settings -> objective); with fewer complete trials than searched
# settings + 1 the split of the variance among the settings is not determined by the data.
MIN_IMPORTANCE_TRIALS = len(SEARCHED) + 1
LOCK_WAIT_S = 1.0  # SQLite's own wait for a lock, per attempt
LOCK_PATIENCE_S = 30.0  # how long a report waits for a study's writer to let go of optuna.db

LABELS = {"lr": "peak learning rate", "weight_decay": "weight decay", "dropout": "dropout probability",
          "label_smoothing": "label smoothing"}
STATE_COLORS = {"complete": "#2ca02c", "pruned": "#ff7f0e", "failed": "#d62728", "running": "#1f77b4",
                "waiting": "#7f7f7f"}
STATE_NAMES = {"complete": "complete (ran the horizon)", "pruned": "pruned (stopped by ASHA)",
               "failed": "failed (crashed or diverged)", "running": "running", "waiting": "waiting"}
STATE_ORDER = ("complete", "pruned", "failed", "running", "waiting")


class ReportError(RecipeError):
    """A study's results cannot be reported; the message names the file and why."""


@dataclass(frozen=True)
class Objective:
    """How the report shows the study's metric: accuracies in percent, losses in nats."""

    metric: str
    mode: str

    @property
    def scale(self) -> float:
        return 100.0 if self.metric == "eval_acc" else 1.0

    @property
    def label(self) -> str:
        return "validation accuracy (%)" if self.metric == "eval_acc" else "validation loss (nats)"

    @property
    def better(self) -> str:
        return "higher" if self.mode == "max" else "lower"

    @property
    def axis(self) -> dict[str, Any]:
        """The value axis of the figures that show every trial: a loss on a log scale, where a trial whose
        learning rate diverges (a loss of thousands) leaves the others' differences (hundredths) visible."""
        return dict(title_text=self.label, type="log" if self.metric == "eval_loss" else "linear")

    def fmt(self, value: float | None) -> str:
        if value is None or not math.isfinite(value):
            return "n/a"
        return f"{self.scale * value:.2f}%" if self.metric == "eval_acc" else f"{value:.4f} nats"


@dataclass(frozen=True)
class EpochBudget:
    """Epochs the search spent against what the same trials would have cost without early stopping.

    Finished trials only: a complete or pruned trial would have run the whole horizon; a failed
    one would have failed at the same epoch. Running trials are counted apart.
    """

    finished_trials: int
    run: int
    without_stopping: int
    running_trials: int
    running_epochs: int

    @property
    def saving(self) -> float | None:
        """The fraction of `without_stopping` that early stopping saved; None with no finished trial."""
        return 1 - self.run / self.without_stopping if self.without_stopping else None


@dataclass(frozen=True)
class FinalRun:
    """What final/ holds: nothing yet, or a run with its per-epoch metrics so far."""

    status: str | None  # None: not started; else the run's summary status ("running" without a summary)
    epochs: int | None  # planned
    history: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def eval_set(self) -> str:
        return self.summary.get("eval_set") or "test"


# ---- reading the results directory -------------------------------------------------------------

def load_spec(paths: StudyPaths) -> StudySpec:
    if not paths.spec.is_file():
        raise ReportError(f"{paths.spec}: no such file; {paths.root} is not a study's results directory")
    return paths.load_spec()  # damaged: a SpecError saying what to do


def open_study(paths: StudyPaths, spec: StudySpec) -> optuna.Study | None:
    """A snapshot of the study's Optuna study, in memory; None if optuna.db is not there yet.

    optuna.db is opened read-only (SQLite mode=ro) and copied at once, so every figure of a running study shows
    the same moment. The driver locks the file while it writes: a locked database is waited for, up to
    LOCK_PATIENCE_S, before it is an error.
    """
    if not paths.optuna_db.is_file():
        return None
    url = f"sqlite:///file:{quote(str(paths.optuna_db))}?mode=ro&uri=true"
    deadline = time.monotonic() + LOCK_PATIENCE_S
    while True:
        storage = None
        try:
            storage = optuna.storages.RDBStorage(url, skip_table_creation=True,
                                                 engine_kwargs={"connect_args": {"timeout": LOCK_WAIT_S}})
            snapshot = optuna.storages.InMemoryStorage()
            optuna.copy_study(from_study_name=spec.name, from_storage=storage, to_storage=snapshot)
            return optuna.load_study(study_name=spec.name, storage=snapshot)
        except KeyError:
            raise ReportError(f"{paths.optuna_db}: holds no Optuna study named {spec.name!r}") from None
        except (optuna.exceptions.OptunaError, SQLAlchemyError, RuntimeError) as e:  # RuntimeError: schema version
            cause = str(e.__cause__ or e).strip()
            first = cause.splitlines()[0] if cause else type(e).__name__
            if "database is locked" not in cause:
                raise ReportError(f"{paths.optuna_db}: not a readable Optuna database ({first})") from None
            if time.monotonic() >= deadline:
                raise ReportError(f"{paths.optuna_db}: locked by another process for {LOCK_PATIENCE_S:g} s "
                                  f"(a study writing it should hold it for a moment only); try again") from None
        finally:
            if storage is not None:
                storage.engine.dispose()


@dataclass(frozen=True)
class FinalRuns:
    """The final runs: one per seed (final/seed-<s>/), and their summary once every one has ended."""

    runs: dict[int, FinalRun]
    summary: dict[str, Any]  # final/summary.json; {} until written
    baseline: dict[int, FinalRun] = field(default_factory=dict)  # the seed recipe's runs, final/baseline/seed-<s>/

    @property
    def started(self) -> bool:
        return bool(self.runs)

    @property
    def eval_set(self) -> str:
        return next((r.eval_set for r in self.runs.values()), "test")

    @property
    def epochs(self) -> int | None:
        return next((r.epochs for r in self.runs.values() if r.epochs), None)


def load_run(run: Path) -> FinalRun:
    summary_path, metrics_path = run / "summary.json", run / "metrics.csv"
    if not summary_path.is_file() and not metrics_path.is_file():
        return FinalRun(status=None, epochs=None, history=[], summary={})
    summary = read_run_record(summary_path, ReportError) if summary_path.is_file() else {}
    history = pd.read_csv(metrics_path).to_dict("records") if metrics_path.is_file() else []
    epochs = summary.get("epochs")
    if epochs is None and (run / "config.json").is_file():
        epochs = read_run_record(run / "config.json", ReportError).get("epochs")
    return FinalRun(status=summary.get("status", "running"), epochs=epochs, history=history, summary=summary)


def load_final(paths: StudyPaths, spec: StudySpec) -> FinalRuns:
    seeds = final_seeds_on_disk(paths)
    runs = {seed: run for seed in seeds if (run := load_run(paths.final_run(seed))).status is not None}
    if not seeds and (paths.final / "metrics.csv").is_file():  # a study from before final/seed-<s>/: one run in final/
        return FinalRuns(runs={spec.seed: load_run(paths.final)}, summary={})
    baseline = {seed: run for seed in final_seeds_on_disk(paths, baseline=True)
                if (run := load_run(paths.final_run(seed, baseline=True))).status is not None}
    # A damaged summary is rebuilt from the runs' own.
    return FinalRuns(runs=runs, summary=load_final_summary(paths) or {}, baseline=baseline)


def epochs_of(trial: FrozenTrial) -> int:
    """Epochs a trial ran: its "epochs" attr once finished, else the last epoch it reported."""
    return int(trial.user_attrs.get("epochs", max(trial.intermediate_values, default=0)))


def state_of(trial: FrozenTrial) -> str:
    return STATES.get(trial.state, trial.state.name.lower())


def count_states(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """Trials by state: complete, pruned and failed always, running and waiting where there are any."""
    counts = {state: 0 for state in ("complete", "pruned", "failed")}
    for t in trials:
        counts[state_of(t)] = counts.get(state_of(t), 0) + 1
    return counts


def epoch_budget(trials: Sequence[FrozenTrial], horizon: int) -> EpochBudget:
    finished = [t for t in trials if t.state.is_finished()]
    running = [t for t in trials if not t.state.is_finished()]
    return EpochBudget(
        finished_trials=len(finished),
        run=sum(epochs_of(t) for t in finished),
        without_stopping=sum(epochs_of(t) if t.state == TrialState.FAIL else horizon for t in finished),
        running_trials=len(running),
        running_epochs=sum(epochs_of(t) for t in running),
    )


def wall_time_s(trials: Sequence[FrozenTrial]) -> float | None:
    """From the first trial's start to the last trial's end (to the latest start while trials run)."""
    starts = [t.datetime_start for t in trials if t.datetime_start]
    events = starts + [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(events) - min(starts)).total_seconds() if starts else None


def format_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def plural(n: float, word: str) -> str:
    """'1 CPU', '1.5 CPUs', '12 epochs': a float as written (:g), an int whole."""
    return f"{f'{n:g}' if isinstance(n, float) else n} {word}{'s' if n != 1 else ''}"


def fmt_param(value: float) -> str:
    return f"{value:.4g}"


def settings_text(params: dict[str, float]) -> str:
    return ", ".join(f"{LABELS[name]} {fmt_param(params[name])}" for name in SEARCHED if name in params)


# ---- figures -------------------------------------------------------------------------------------

def integer_ticks(largest: int) -> dict[str, Any]:
    """Axis settings that tick whole numbers only (trial numbers, epochs), at most about a dozen."""
    step = next((s for s in (1, 2, 5, 10, 20, 25, 50, 100) if largest / s <= 12), None)
    return dict(tick0=0, dtick=step) if step else {}


def target_of(objective: Objective) -> Callable[[FrozenTrial], float]:
    return lambda t: objective.scale * t.value


def history_figure(trials: Sequence[FrozenTrial], objective: Objective, horizon: int) -> go.Figure | None:
    """Each trial's value against its number, and the best complete trial so far.

    Our own rather than plot_optimization_history: that one leaves out pruned trials and, once
    a target rescales the values (to percent), draws no best-so-far line.
    """
    fig = go.Figure()
    shown = False
    for state, symbol in (("complete", "circle"), ("pruned", "x"), ("running", "circle-open")):
        xs, ys, text = [], [], []
        for t in trials:
            value = t.value if state != "running" else t.intermediate_values.get(max(t.intermediate_values, default=0))
            if state_of(t) != state or value is None or not math.isfinite(value):
                continue
            xs.append(t.number)
            ys.append(objective.scale * value)
            text.append(f"trial {t.number} ({state}, epoch {epochs_of(t)} of {horizon})")
        if xs:
            shown = True
            name = {"complete": "complete: value at the horizon", "pruned": "pruned: value at the epoch it stopped",
                    "running": "running: value at its latest epoch"}[state]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=name, text=text,
                                     marker=dict(color=STATE_COLORS[state], symbol=symbol, size=9),
                                     hovertemplate="%{text}<br>%{y:.2f}<extra></extra>"))
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    if complete:
        pick = max if objective.mode == "max" else min
        best, xs, ys = None, [], []
        for t in complete:
            best = t.value if best is None else pick(best, t.value)
            xs.append(t.number)
            ys.append(objective.scale * best)
        last = max(t.number for t in trials)
        if xs[-1] != last:
            xs.append(last)
            ys.append(ys[-1])
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#444", shape="hv"),
                                 name="best complete trial so far"))
    if not shown:
        return None
    fig.update_layout(title="Optimisation history", height=430, legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(title_text="trial number", rangemode="tozero", **integer_ticks(max(t.number for t in trials)))
    fig.update_yaxes(**objective.axis)
    return fig


def curves_figure(trials: Sequence[FrozenTrial], objective: Objective, rungs: Sequence[int], horizon: int,
                  best: FrozenTrial | None) -> go.Figure | None:
    """Every trial's validation curve, coloured by state, with ASHA's rungs as vertical lines."""
    fig = go.Figure()
    legend_done: set[str] = set()
    for state in STATE_ORDER:
        for t in trials:
            if state_of(t) != state or not t.intermediate_values:
                continue
            epochs = sorted(t.intermediate_values)
            values = [t.intermediate_values[e] for e in epochs]
            fig.add_trace(go.Scatter(
                x=epochs, y=[objective.scale * v if math.isfinite(v) else None for v in values],
                mode="lines+markers" if horizon <= 60 else "lines", name=STATE_NAMES[state], legendgroup=state,
                showlegend=state not in legend_done, line=dict(color=STATE_COLORS[state], width=1.5),
                marker=dict(size=4), opacity=0.75,
                hovertemplate=f"trial {t.number} ({state})<br>epoch %{{x}}: %{{y:.2f}}<extra></extra>",
            ))
            legend_done.add(state)
    if not fig.data:
        return None
    if best is not None:
        epochs = sorted(best.intermediate_values)
        fig.add_trace(go.Scatter(
            x=epochs, y=[objective.scale * best.intermediate_values[e] for e in epochs], mode="lines",
            name=f"best trial ({best.number})", line=dict(color="black", width=3),
            hovertemplate=f"best trial {best.number}<br>epoch %{{x}}: %{{y:.2f}}<extra></extra>",
        ))
    for r in rungs:
        fig.add_vline(x=r, line=dict(color="#888", dash="dot"), annotation_text=f"rung {r}",
                      annotation_position="top")
    fig.update_layout(title="Learning curves of every trial", height=480, legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(title_text="epoch", range=[0.5, horizon + 0.5], **integer_ticks(horizon))
    fig.update_yaxes(**objective.axis)
    return fig


def parallel_figure(study: optuna.Study, objective: Objective) -> go.Figure:
    fig = optuna.visualization.plot_parallel_coordinate(study, params=list(SEARCHED), target=target_of(objective),
                                                        target_name=objective.label)
    fig.update_layout(title=dict(text="Parallel coordinates of the complete trials"), height=480)
    return fig


def importance_figure(study: optuna.Study, objective: Objective, seed: int) -> go.Figure:
    fig = optuna.visualization.plot_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed), params=list(SEARCHED),
        target=target_of(objective), target_name=objective.label,
    )
    fig.update_layout(title="Hyperparameter importances (fANOVA, complete trials)", height=360)
    fig.update_xaxes(title_text=f"importance: share of the variance of the {objective.label} (sums to 1)")
    fig.update_yaxes(title_text="hyperparameter")
    return fig


def slice_figure(study: optuna.Study, objective: Objective, spec: StudySpec) -> go.Figure:
    fig = optuna.visualization.plot_slice(study, params=list(SEARCHED), target=target_of(objective),
                                          target_name=objective.label)
    titles = {name: LABELS[name] + (" (log scale)" if spec.space[name].log else "") for name in SEARCHED}
    fig.for_each_xaxis(lambda axis: axis.update(title_text=titles.get(axis.title.text, axis.title.text)))
    fig.update_layout(title="Slices: the objective against each hyperparameter (complete trials)", height=420)
    return fig


def final_figure(final: FinalRuns, best: FrozenTrial | None) -> go.Figure:
    """The headline: every final run's test accuracy per epoch, overlaid, with their mean +- one sample std; and the
    seed recipe's runs beside them (the baseline), each seed thin, their mean thick."""
    which = f"trial {best.number}'s settings" if best is not None else "the best settings"
    length = f"{final.epochs} epochs" if final.epochs else "the full recipe"
    fig = go.Figure()
    curves = {seed: {int(row["epoch"]): 100 * row["eval_acc"] for row in run.history} for seed, run in final.runs.items()}
    baseline = {seed: {int(row["epoch"]): 100 * row["eval_acc"] for row in run.history}
                for seed, run in final.baseline.items()}
    several = len(curves) > 1
    both = bool(baseline)
    for seed, curve in curves.items():
        fig.add_trace(go.Scatter(
            x=list(curve), y=list(curve.values()), mode="lines+markers" if len(curve) <= 60 else "lines",
            name=f"seed {seed}", line=dict(width=1.5 if several or both else 2.5), marker=dict(size=4),
            opacity=0.7 if several or both else 1.0,
            hovertemplate=f"seed {seed}<br>epoch %{{x}}: %{{y:.2f}}%<extra></extra>"))
    # Mean and std at each epoch that two runs or more reached with a number (a diverged epoch is not one).
    epochs, means, stds, counts = mean_curve(curves)
    if epochs:
        fig.add_trace(go.Scatter(x=epochs + epochs[::-1], y=[m + d for m, d in zip(means, stds)]
                                 + [m - d for m, d in zip(means[::-1], stds[::-1])],
                                 mode="lines", fill="toself", fillcolor="rgba(0,0,0,0.12)", line=dict(width=0),
                                 hoverinfo="skip",
                                 name="mean +- std"))
        fig.add_trace(go.Scatter(x=epochs, y=means, mode="lines", line=dict(color="black", width=3),
                                 name=f"mean of {len(curves)} seeds", customdata=stds, text=counts,
                                 hovertemplate="mean of %{text} runs<br>epoch %{x}: %{y:.2f} +- %{customdata:.2f}%"
                                               "<extra></extra>"))
    colour = "#d62728"  # the baseline's, apart from the chosen settings' black mean
    for seed, curve in baseline.items():
        fig.add_trace(go.Scatter(
            x=list(curve), y=list(curve.values()), mode="lines", name=f"seed recipe, seed {seed}",
            line=dict(width=1.5, color=colour, dash="dot"), opacity=0.6,
            hovertemplate=f"seed recipe, seed {seed}<br>epoch %{{x}}: %{{y:.2f}}%<extra></extra>"))
    b_epochs, b_means, b_stds, b_counts = mean_curve(baseline)
    if b_epochs:
        fig.add_trace(go.Scatter(x=b_epochs, y=b_means, mode="lines", line=dict(color=colour, width=3),
                                 name=f"seed recipe: mean of {len(baseline)} seeds", text=b_counts,
                                 hovertemplate="seed recipe, mean of %{text} runs<br>epoch %{x}: %{y:.2f}%"
                                               "<extra></extra>"))
    title = f"Final run{'s' * several}: {length} with {which}" + (f", {len(curves)} seeds" if several else "")
    if both:
        title += ", and the seed recipe on the same seeds"
    fig.update_layout(title=title, height=430, legend=dict(orientation="h", y=-0.2))
    longest = max((max(c, default=0) for c in [*curves.values(), *baseline.values()]), default=0)
    fig.update_xaxes(title_text="epoch", **integer_ticks(longest))
    fig.update_yaxes(title_text=f"{final.eval_set} accuracy (%)")
    return fig


def mean_curve(curves: dict[int, dict[int, float]]) -> tuple[list[int], list[float], list[float], list[int]]:
    """Each epoch that two runs or more reached with a number (a diverged epoch is not one): its mean, sample std
    and how many runs; none for one run."""
    if len(curves) < 2:
        return [], [], [], []
    finite = {e: [c[e] for c in curves.values() if e in c and math.isfinite(c[e])]
              for e in sorted(set().union(*(set(c) for c in curves.values())))}
    epochs = [e for e, values in finite.items() if len(values) > 1]
    return (epochs, [statistics.fmean(finite[e]) for e in epochs], [statistics.stdev(finite[e]) for e in epochs],
            [len(finite[e]) for e in epochs])


def final_run_figure(seed: int, run: FinalRun) -> go.Figure:
    length = f"{run.epochs} epochs" if run.epochs else "the full recipe"
    return run_figure(run.history, f"Final run with seed {seed} in detail: {length}", eval_name=run.eval_set)


def revalidation_figure(record: dict[str, Any], objective: Objective) -> go.Figure:
    """Each re-validated trial: its search value, its re-runs and their mean; the chosen one marked."""
    fig = go.Figure()
    names = [f"trial {r['trial_id']}" for r in record["trials"]]
    runs = {r["trial_id"]: [x for x in record["runs"] if x["trial_id"] == r["trial_id"]] for r in record["trials"]}

    def scaled(v: float | None) -> float | None:
        return objective.scale * v if v is not None and math.isfinite(v) else None

    fig.add_trace(go.Scatter(x=names, y=[scaled(r["value"]) for r in record["trials"]], mode="markers",
                             name="search (seed of the study)", marker=dict(symbol="circle", size=11, color="#1f77b4"),
                             hovertemplate="%{x}, search: %{y:.2f}<extra></extra>"))
    xs, ys, text = [], [], []
    for name, r in zip(names, record["trials"]):
        for run in runs[r["trial_id"]]:
            xs.append(name)
            ys.append(scaled(run["value"]))
            text.append(f"seed {run['seed']}, {run['status']}")
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"re-run (seed {record['seed']})", text=text,
                             marker=dict(symbol="diamond", size=11, color="#ff7f0e"),
                             hovertemplate="%{x}, %{text}: %{y:.2f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=names, y=[scaled(r["mean_value"]) for r in record["trials"]], mode="markers",
                             name="mean of its runs", marker=dict(symbol="line-ew-open", size=34, color="black",
                                                                  line=dict(width=3)),
                             hovertemplate="%{x}, mean: %{y:.2f}<extra></extra>"))
    chosen = next(r for r in record["trials"] if r["trial_id"] == record["chosen"])
    fig.add_annotation(x=f"trial {chosen['trial_id']}", y=scaled(chosen["mean_value"]) or 0, text="chosen",
                       showarrow=True, arrowhead=2, ay=-40)
    what = (f"trial {record['chosen']} chosen by its mean, over trial {record['best_single']} (the best single value)"
            if record["changed"] else f"trial {record['chosen']} stays the best by its mean")
    fig.update_layout(title=f"Re-validation of the top trials: {what}", height=400,
                      legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(title_text="trial (ranked by its search value, best first)")
    fig.update_yaxes(title_text=objective.label)
    return fig


def revalidation_table(record: dict[str, Any], objective: Objective) -> str:
    rows = []
    for r in record["trials"]:
        again = [x for x in record["runs"] if x["trial_id"] == r["trial_id"]]
        reruns = ", ".join(f"{objective.fmt(x['value']) if x['value'] is not None else x['status']} (seed {x['seed']})"
                           for x in again) or "none"
        rows.append({"trial": r["trial_id"], "search value": objective.fmt(r["value"]), "re-runs": reruns,
                     "mean": objective.fmt(r["mean_value"]),
                     "chosen": "chosen" if r["trial_id"] == record["chosen"] else ""})
    return pd.DataFrame(rows).to_html(index=False, table_id="revalidated", border=0, escape=True)


# ---- the page -----------------------------------------------------------------------------------

def figure_html(fig: go.Figure, key: str) -> str:
    # Every figure takes the page's width (Optuna's slice plot fixes 300 px a subplot, wider than a
    # laptop screen); a fixed div id keeps the page the same for the same study (Plotly's is random).
    fig.layout.width = None
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{key}",
                       config={"displaylogo": False, "responsive": True})


def section(key: str, title: str, body: str, caption: str) -> str:
    return (f'<section id="{key}"><h2>{html.escape(title)}</h2><figure>{body}'
            f'<figcaption>{caption}</figcaption></figure></section>')


def missing(key: str, text: str) -> str:
    return f'<p class="missing" id="{key}-missing">{html.escape(text)}</p>'


def spec_html(spec: StudySpec) -> str:
    seed = spec.seed_params()
    space = pd.DataFrame([{"setting": LABELS[n], "low": fmt_param(p.low), "high": fmt_param(p.high),
                           "scale": "log" if p.log else "linear", "seed recipe (trial 0)": fmt_param(seed[n])}
                          for n, p in ((n, spec.space[n]) for n in SEARCHED)])
    a, s, r = spec.asha, spec.sampler, spec.resources
    overrides = "; ".join(
        f"[{table}] " + ", ".join(f"{k}={v}" for k, v in sorted(getattr(spec, table).items()))
        for table in ("recipe", "trial", "final") if getattr(spec, table)
    ) or "none"
    items = [
        ("objective", f"{spec.metric} ({'maximised' if spec.mode == 'max' else 'minimised'}), on the validation split"),
        ("trials", f"{spec.trials} planned, seed {spec.seed}"),
        ("ASHA", f"horizon {a.horizon} epochs, grace period {a.grace_period}, reduction factor {a.reduction_factor}; "
                 f"rungs at epochs {', '.join(map(str, spec.rungs())) or 'none'}"),
        ("sampler", f"TPE, {s.n_startup_trials} random startup trials, multivariate {s.multivariate}, "
                    f"constant liar {s.constant_liar}"),
        ("resources", ("CPU only" if r.gpus == 0 else
                       f"GPUs {'all' if r.gpus is None else r.gpus}, {r.trials_per_gpu} trials per GPU")
                      + f", {plural(r.cpus_per_trial, 'CPU')} per trial, retries of a crashed trial: {r.max_failures}"),
        ("recipe overrides", overrides),
    ]
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)
    return (f'<dl class="spec">{rows}</dl>{space.to_html(index=False, classes="space", border=0)}'
            f'<details><summary>spec.json</summary><pre>{html.escape(json.dumps(spec.to_dict(), indent=2))}'
            f'</pre></details>')


def run_text(final: FinalRun) -> str:
    """Where one final run stands, in a line."""
    if final.status is None:
        return "final run not started"
    done, planned = len(final.history), final.epochs or "?"
    last = final.history[-1] if final.history else {}
    acc = Objective("eval_acc", "max")
    name = final.eval_set
    if final.status == "running":
        so_far = f"; {name} accuracy {acc.fmt(last.get('eval_acc'))} at epoch {done}" if done else ""
        return f"running, epoch {done} of {planned}{so_far}"
    best_acc, best_epoch = final.summary.get("best_eval_acc"), final.summary.get("best_epoch")
    best = (f"; best epoch: {acc.fmt(best_acc)} at epoch {best_epoch} (picked on the {name} set itself, so quote "
            f"the last epoch)" if best_epoch else "")
    if final.status == "completed":
        return f"{name} accuracy {acc.fmt(last.get('eval_acc'))} at the last epoch ({done} of {planned}){best}"
    return f"{final.status} at epoch {done} of {planned}{best}"


def final_text(final: FinalRuns) -> str:
    """The final runs in a line: one run as it stands, or several seeds' mean +- std and each one; then the seed
    recipe's runs beside them (the baseline) as the study's last line says it, or each as it stands."""
    if not final.started:
        return "final run not started"
    return chosen_text(final) + baseline_text(final)


def baseline_text(final: FinalRuns) -> str:
    summary = final.summary
    if summary.get("baseline_skipped") or (summary.get("baseline") or {}).get("mean_final_eval_acc") is not None:
        return comparison_text(summary)
    if not final.baseline:
        return ""
    return "; the seed recipe: " + "; ".join(f"seed {seed}: {run_text(run)}" for seed, run in final.baseline.items())


def chosen_text(final: FinalRuns) -> str:
    if len(final.runs) == 1 and len(final.summary.get("seeds", [0])) == 1:
        return run_text(next(iter(final.runs.values())))
    summary, acc = final.summary, Objective("eval_acc", "max")
    mean, std = summary.get("mean_final_eval_acc"), summary.get("std_final_eval_acc")
    if mean is None:  # still running, or none completed
        return "; ".join(f"seed {seed}: {run_text(run)}" for seed, run in final.runs.items())
    each = ", ".join(f"seed {seed}: {acc.fmt((run.history or [{}])[-1].get('eval_acc'))}"
                     + ("" if run.status == "completed" else f" ({run.status})") for seed, run in final.runs.items())
    spread = f" +- {100 * std:.2f}%" if std is not None else ""
    head = (f"{final.eval_set} accuracy {100 * mean:.2f}%{spread} at the last epoch, mean and sample std over "
            f"{plural(summary['n'], 'seed')}")
    return f"{head}; {each}" + ("" if summary["status"] == "completed" else f"; {summary['status']}")


def budget_text(spec: StudySpec, trials: Sequence[FrozenTrial], revalidation: dict[str, Any] | None,
                final: FinalRuns) -> str:
    """Epochs the search ran and saved by early stopping; what re-validation, extra final seeds and the baseline cost."""
    budget = epoch_budget(trials, spec.asha.horizon)
    if budget.saving is None:
        text = "no trial has finished yet"
    else:
        text = (f"{plural(budget.run, 'epoch')} run by {plural(budget.finished_trials, 'finished trial')}, "
                f"against {budget.without_stopping} without early stopping (complete and pruned trials at the "
                f"horizon of {spec.asha.horizon}, failed ones as far as they ran): {100 * budget.saving:.1f}% saved")
    if budget.running_trials:
        text += f"; {plural(budget.running_trials, 'running trial')}: {plural(budget.running_epochs, 'epoch')} so far"
    if revalidation is not None:
        wall = revalidation.get("wall_time_s")
        text += (f"; re-validation: {plural(len(revalidation['runs']), 'run')} of the top trials, "
                 f"{plural(revalidation['epochs'], 'epoch')}"
                 + (f", {format_duration(wall)} of wall time" if wall is not None else ""))
    extra = [(seed, run) for seed, run in final.runs.items() if seed != spec.seed]
    if extra:
        epochs = sum(len(run.history) for _, run in extra)
        compute = sum(run.summary.get("wall_time_s") or 0 for _, run in extra)
        text += (f"; extra final seeds: {len(extra)} ({plural(epochs, 'epoch')}"
                 + (f", {format_duration(compute)} of run time" if compute else "")
                 + ", side by side with the first seed's run"
                 + (", spread over the GPUs)" if spec.resources.gpus != 0 else ")"))
    if final.baseline:
        epochs = sum(len(run.history) for run in final.baseline.values())
        compute = sum(run.summary.get("wall_time_s") or 0 for run in final.baseline.values())
        text += (f"; the baseline (the seed recipe's final runs): {plural(len(final.baseline), 'run')} "
                 f"({plural(epochs, 'epoch')}" + (f", {format_duration(compute)} of run time" if compute else "")
                 + ", side by side with the chosen settings' runs)")
    return text


def best_text(spec: StudySpec, best: FrozenTrial | None, objective: Objective,
              revalidation: dict[str, Any] | None) -> str:
    if best is None:
        return "none yet: no trial has run the whole horizon"
    seed_note = " (the seed recipe)" if best.number == 0 else ""
    what = objective.label.split(" (")[0]
    text = f"trial {best.number}{seed_note}: {what} {objective.fmt(best.value)} at epoch {spec.asha.horizon}"
    if revalidation is not None:
        mine = next(r for r in revalidation["trials"] if r["trial_id"] == best.number)
        text += f", mean {objective.fmt(mine['mean_value'])} over {plural(len(mine['values']), 'run')}"
        text += (f", chosen by re-validation over trial {revalidation['best_single']} (the best single value)"
                 if revalidation["changed"] else ", still the best after re-validation")
    return f"{text}; {settings_text(best.params)}"


def header_html(spec: StudySpec, trials: Sequence[FrozenTrial], best: FrozenTrial | None, final: FinalRuns,
                objective: Objective, db_present: bool, revalidation: dict[str, Any] | None = None) -> str:
    counts = count_states(trials)
    by_state = ", ".join(f"{n} {state}" for state, n in counts.items())
    running = any(not t.state.is_finished() for t in trials)
    wall = wall_time_s(trials)
    wall_text = "n/a" if wall is None else format_duration(wall) + (" so far" if running else "")
    items = [
        ("trials", "trials", f"{len(trials)} of {spec.trials} planned: {by_state}" if db_present
         else "no trials yet (no optuna.db)"),
        ("epochs", "epochs", budget_text(spec, trials, revalidation, final)),
        ("wall", "wall time", wall_text),
        ("best", "best trial", best_text(spec, best, objective, revalidation)),
        ("final", "final run", final_text(final)),
    ]
    rows = "".join(f'<dt>{html.escape(label)}</dt><dd id="header-{key}">{html.escape(text)}</dd>'
                   for key, label, text in items)
    return f'<header><h1>Study {html.escape(spec.name)}</h1><dl class="facts">{rows}</dl>{spec_html(spec)}</header>'


def table_html(study: optuna.Study | None, spec: StudySpec, objective: Objective,
               revalidation: dict[str, Any] | None = None) -> str:
    """All trials, one row each, as in trials.csv (read from optuna.db, so running trials too)."""
    if study is None or not study.trials:
        return missing("trials", "No trials yet.")
    frame = trials_frame(study, spec, revalidation)
    unit = "%" if objective.metric == "eval_acc" else "nats"
    value_columns = {"value": f"value ({unit})", "best_value": f"best epoch ({unit})", "mean_value": f"mean ({unit})"}
    frame["revalidated_values"] = ["" if v is None or pd.isna(v) else ", ".join(
        "n/a" if x is None or not math.isfinite(x) else f"{objective.scale * x:.2f}" for x in json.loads(v))
        for v in frame["revalidated_values"]]

    def number(fmt: Callable[[float], str]) -> Callable[[Any], str]:
        return lambda v: "" if v is None or pd.isna(v) else fmt(v)

    formatters = {
        **{label: number(lambda v: f"{objective.scale * v:.2f}") for label in value_columns.values()},
        **{name: number(fmt_param) for name in SEARCHED},
        "time (s)": number(lambda v: f"{v:.0f}"),
        "epochs": number(lambda v: f"{int(v)}"),
    }
    for text in ("ray_trial_id", "reason"):  # pandas prints a column of None as "None" whatever na_rep says
        frame[text] = ["" if v is None or pd.isna(v) else str(v) for v in frame[text]]
    frame = frame.rename(columns={"trial_id": "trial", "time_s": "time (s)", "ray_trial_id": "Ray trial",
                                  "revalidated_values": f"re-runs ({unit})", **value_columns})
    table = frame.to_html(index=False, table_id="trials", border=0, na_rep="", classes="sortable",
                          formatters=formatters)
    return f'<div class="wide">{table}</div>'


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1300px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.3em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
dl.facts, dl.spec { display: grid; grid-template-columns: max-content 1fr; gap: 0.25em 1em; }
dt { font-weight: 600; } dd { margin: 0; }
figure { margin: 0; } figcaption { color: #555; font-size: 0.92em; margin-top: 0.4em; }
.wide { overflow-x: auto; }
.missing { padding: 1em; background: #f6f6f6; border-left: 4px solid #bbb; }
table { border-collapse: collapse; font-size: 0.88em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #e4e4e4; text-align: right; }
#trials td:nth-child(2), #trials td:last-child { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; background: #f3f3f3; position: sticky; top: 0; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
"""

# Click a header to sort by it (again to reverse); numbers sort as numbers, blanks last.
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].textContent.trim(), y = b.cells[col].textContent.trim();
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def build_report(paths: StudyPaths) -> str:
    """The report page of the study in `paths`, as HTML; raises ReportError if it cannot be read."""
    spec = load_spec(paths)
    if paths.trials_csv.is_file():  # not read here, but a damaged one is rebuilt (recipe.train --from-study reads it)
        trial_states(paths)
    study = open_study(paths, spec)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number) if study is not None else []
    objective = Objective(spec.metric, spec.mode)
    revalidation = load_revalidation(paths)
    best = chosen_trial(study, spec, revalidation) if study is not None else None
    final = load_final(paths, spec)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    n_complete = len(complete)
    parts = [header_html(spec, trials, best, final, objective, study is not None, revalidation)]

    if final.runs:
        first_seed, first = next(iter(final.runs.items()))
        body = figure_html(final_figure(final, best), "final")
        if first.history:
            body += figure_html(final_run_figure(first_seed, first), "final-run")
    else:
        body = missing("final", "Final run not started.")
    seeds = len(final.summary.get("seeds", final.runs)) or 1
    parts.append(section(
        "final", "Final run" + ("s" if seeds > 1 else ""), body,
        f"The full recipe with the chosen trial's settings, trained on the whole training set and evaluated on the "
        f"{final.eval_set} set after every epoch"
        + (f", once per seed ({seeds} seeds): each run's {final.eval_set} accuracy, and their mean with a band of one "
           f"sample standard deviation over the epochs every run has reached" if seeds > 1 else "")
        + (". In red, dotted: the seed recipe's settings (trial 0's) trained the same way on the same seeds (the "
           "baseline, final/baseline/seed-&lt;s&gt;/), each seed thin and their mean thick: the same seed draws the "
           "same initialisation (and the same data order and augmentation, but where one side's dropout is 0: it "
           "draws nothing), so each seed's difference is what the search bought"
           if final.baseline else "")
        + f". Below it, the first run's loss, accuracy and learning rate at the end of each epoch (each run's "
          f"directory final/seed-&lt;s&gt;/ has its own curves.html). The {final.eval_set} set chose nothing: quote "
          f"the last epoch."))

    k = spec.selection.revalidate_top
    if revalidation is not None:
        body = figure_html(revalidation_figure(revalidation, objective), "revalidation") + (
            f'<div class="wide">{revalidation_table(revalidation, objective)}</div>')
    elif k == 0:
        body = missing("revalidation", "Re-validation is off for this study (revalidate_top = 0): the best single "
                                       "value of the search chose the final settings.")
    elif n_complete == 0 or any(not t.state.is_finished() for t in trials) or len(trials) < spec.trials:
        body = missing("revalidation", f"Re-validation of the top {k} trials runs when the search has ended.")
    else:
        body = missing("revalidation", f"Re-validation of the top {k} trials has not finished yet.")
    parts.append(section(
        "revalidation", "Re-validation of the top trials", body,
        f"Two runs of the same settings differ by about as much as a study's best few trials, so the single best "
        f"value is partly luck. The {k} best complete trials are trained again at the horizon with another seed "
        f"(the same validation split; another initialisation, order and augmentation draw), and the trial with the "
        f"best mean over its runs ({objective.better} is better) is the one the final run trains. optuna.db keeps "
        f"the search's trials as they were."))

    fig = history_figure(trials, objective, spec.asha.horizon)
    parts.append(section(
        "history", "Optimisation history",
        figure_html(fig, "history") if fig else missing("history", "No trial has reported a value yet."),
        f"Each trial's {objective.label} against its number: complete trials at the horizon "
        f"(epoch {spec.asha.horizon}), pruned trials at the epoch ASHA stopped them (earlier in the schedule, so "
        f"not comparable with complete ones), running trials at their latest epoch. The line is the best complete "
        f"trial so far ({objective.better} is better). Failed trials have no value and are left out; the table "
        f"lists them."))

    fig = curves_figure(trials, objective, spec.rungs(), spec.asha.horizon, best)
    parts.append(section(
        "curves", "Learning curves",
        figure_html(fig, "curves") if fig else missing("curves", "No trial has finished an epoch yet."),
        f"The {objective.label} of every trial after each epoch (its Optuna intermediate values), coloured by "
        f"state, the best trial in black. Dotted lines: ASHA's rungs (epochs {', '.join(map(str, spec.rungs()))}), "
        f"where it keeps the best 1/{spec.asha.reduction_factor} of the trials that reached the rung and stops the "
        f"rest. A diverged epoch (not a number) is a gap."))

    why_complete = ("Only complete trials (those that ran the whole horizon): a pruned trial's value comes from an "
                    "earlier epoch of the schedule and would read as a worse setting.")
    no_complete = f"No trial has run the whole horizon yet ({spec.asha.horizon} epochs): nothing to show."
    parts.append(section(
        "parallel", "Hyperparameters against the objective",
        figure_html(parallel_figure(study, objective), "parallel") if n_complete else missing("parallel", no_complete),
        f"One line per complete trial through its four settings and its {objective.label}, coloured by the "
        f"objective. {why_complete}"))

    if n_complete < MIN_IMPORTANCE_TRIALS:
        body = missing("importances", f"Importances need at least {MIN_IMPORTANCE_TRIALS} complete trials (one more "
                                      f"than the {len(SEARCHED)} searched settings); this study has {n_complete}.")
    else:
        try:
            body = figure_html(importance_figure(study, objective, spec.seed), "importances")
        except RuntimeError as e:  # fANOVA's "zero total variance": every complete trial scored the same
            body = missing("importances", f"Importances could not be computed: {e}")
    parts.append(section(
        "importances", "Hyperparameter importances", body,
        f"How much of the variance of the {objective.label} over the complete trials each setting explains "
        f"(Optuna's fANOVA evaluator, seeded with the study's seed {spec.seed} so the report is reproducible). "
        f"{why_complete}"))

    parts.append(section(
        "slice", "Slices",
        figure_html(slice_figure(study, objective, spec), "slice") if n_complete else missing("slice", no_complete),
        f"The {objective.label} of each complete trial against each setting, coloured by trial number (later "
        f"trials darker). {why_complete}"))

    parts.append(f'<section id="table"><h2>All trials</h2>{table_html(study, spec, objective, revalidation)}'
                 f'<p class="note">Read from optuna.db; click a column header to sort by it. value: the '
                 f'{objective.label} at the trial\'s last epoch (the horizon for a complete trial, the epoch it was '
                 f'stopped at for a pruned one); best epoch: its best epoch; re-runs and mean: a re-validated trial\'s '
                 f're-validation values and the mean over all its runs; time: its wall time.</p></section>')

    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Study {html.escape(spec.name)}: report</title><style>{CSS}</style>"
        f"<script type=\"text/javascript\">{plotly.offline.get_plotlyjs()}</script></head>\n<body>\n"
        + "\n".join(parts)
        + f"\n<script>{SORT_JS}</script>\n</body></html>\n"
    )


def write_report(paths: StudyPaths) -> Path:
    """Write paths.report (atomically) and return its path; raises ReportError, writing nothing, on bad input."""
    page = build_report(paths)
    write_text(paths.report, page)
    return paths.report


def latest_study(results_dir: Path) -> Path | None:
    """The study directory under results_dir whose spec.json changed last."""
    specs = sorted(results_dir.glob("*/spec.json"), key=lambda p: p.stat().st_mtime)
    return specs[-1].parent if specs else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m search.report", description=(
        "Write results/<study>/report.html: a self-contained Plotly report of a study, finished or running."))
    parser.add_argument("--study", metavar="NAME", help="the study's name: its directory under --results-dir "
                                                        "(default: the study whose spec.json changed last)")
    parser.add_argument("--results-dir", metavar="DIR", default="results", help="where studies live (default: results)")
    args = parser.parse_args(argv)
    results = Path(args.results_dir)
    if not results.is_dir():
        fail(f"--results-dir {results}: no such directory")
    if args.study is None:
        root = latest_study(results)
        if root is None:
            fail(f"{results}: holds no study (no */spec.json); run python -m search.run first, or give --results-dir")
    else:
        root = results / args.study
        if not (root / "spec.json").is_file():
            known = ", ".join(sorted(p.parent.name for p in results.glob("*/spec.json"))) or "none"
            what = "no such study directory" if not root.is_dir() else "no spec.json there"
            fail(f"--study {args.study}: {what} in {results} (studies there: {known})")
    try:
        out = write_report(StudyPaths(root.resolve()))
    except RecipeError as e:
        fail(str(e))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
