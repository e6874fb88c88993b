"""A compact live view of a study, in place of Ray Tune's own output.

One line per event (a trial starts, is stopped, completes, fails) and a status line: on a
terminal it is redrawn in place at every result; otherwise it is printed once a minute.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from search.searcher import StudySearcher
from search.study import StudySpec
from search.trainable import RESTARTED


def settings(params: dict[str, float]) -> str:
    return (f"lr {params['lr']:.4g}, wd {params['weight_decay']:.3g}, dropout {params['dropout']:.3f}, "
            f"smoothing {params['label_smoothing']:.3f}")


class LiveView(Callback):
    def __init__(self, searcher: StudySearcher, spec: StudySpec, stream: TextIO | None = None,
                 interval_s: float = 60.0) -> None:
        self.searcher, self.spec = searcher, spec
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.interval_s = interval_s
        self.running: dict[str, tuple[int, float]] = {}  # trial id -> (epoch, value)
        self.counts = {"complete": 0, "pruned": 0, "failed": 0}
        self.best: tuple[float, int] | None = None
        self.last_status = 0.0
        self.status_shown = False

    def setup(self, **info: Any) -> None:
        # A resumed study starts from its record: the trials that ended before.
        tally = self.searcher.tally()
        self.counts = {"complete": tally["complete"], "pruned": tally["pruned"], "failed": tally["fail"]}
        self.best = self.searcher.best_so_far()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment
        state = self.__dict__.copy()
        state["stream"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stdout
        self.tty = self.stream.isatty()

    def _metric(self, value: float) -> str:
        if self.spec.metric == "eval_acc":
            return f"val accuracy {100 * value:.2f}%"
        return f"val loss {value:.4f}"

    def _name(self, trial: Any) -> str:
        number = self.searcher.number(trial.trial_id)
        return f"trial {number}" if number is not None else f"trial {trial.trial_id}"

    def _line(self, text: str) -> None:
        if self.tty and self.status_shown:
            self.stream.write("\r\x1b[2K")
        self.stream.write(f"{time.strftime('%H:%M:%S')}  {text}\n")
        self.status_shown = False
        self._status(force=self.tty)

    def _status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and not self.tty and now - self.last_status < self.interval_s:
            return  # a terminal's status line is redrawn at every result; a log gets it once an interval
        self.last_status = now
        epochs = ", ".join(f"{self._name_of(tid)}@{e}" for tid, (e, _) in sorted(self.running.items()))
        best = f"best: {self._metric(self.best[0])} (trial {self.best[1]})" if self.best else "best: none yet"
        done = sum(self.counts.values())
        text = (f"[{done}/{self.spec.trials} done: {self.counts['complete']} complete, {self.counts['pruned']} pruned, "
                f"{self.counts['failed']} failed; {best}; running: {epochs or 'none'}]")
        if self.tty:
            self.stream.write("\r\x1b[2K" + text[: 200])
            self.status_shown = True
        else:
            self.stream.write(f"{time.strftime('%H:%M:%S')}  {text}\n")
        self.stream.flush()

    def _name_of(self, trial_id: str) -> str:
        number = self.searcher.number(trial_id)
        return f"#{number}" if number is not None else trial_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running[trial.trial_id] = (0, float("nan"))
        self._line(f"{self._name(trial)} started: {settings(trial.config)}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if trial.trial_id in self.running and "epoch" in result:
            self.running[trial.trial_id] = (result["epoch"], result.get(self.spec.metric, float("nan")))
        if RESTARTED in result:
            self._line(f"{self._name(trial)}: {result[RESTARTED]}")
        self._status()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epoch, value = self.running.pop(trial.trial_id, (0, float("nan")))
        state = self.searcher.final_state(trial.trial_id) or "complete"
        if state == "fail":
            self.counts["failed"] += 1
            self._line(f"{self._name(trial)} failed: {self.searcher.failure_reason(trial.trial_id)}")
            return
        self.counts[state] += 1
        number = self.searcher.number(trial.trial_id)
        better = state == "complete" and (
            self.best is None or (value > self.best[0] if self.spec.mode == "max" else value < self.best[0]))
        if better:
            self.best = (value, number)
        where = "ran the whole horizon" if state == "complete" else f"stopped by ASHA at epoch {epoch}"
        self._line(f"{self._name(trial)} {state}: {where}, {self._metric(value)}"
                   + ("  (best so far)" if better else ""))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.pop(trial.trial_id, None)
        self.counts["failed"] += 1
        reason = self.searcher.failure_reason(trial.trial_id) or "error"
        self._line(f"{self._name(trial)} failed: {reason}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(f"{self._name(trial)} crashed; retrying from its last checkpoint "
                   f"(attempt {trial.num_failures + 1} of {trial.max_failures + 1})")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._status(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class RevalidationView(Callback):
    """A line as each re-validation run starts, ends or fails."""

    def __init__(self, values: dict[int, float], metric: str, horizon: int, stream: TextIO | None = None) -> None:
        self.values, self.metric, self.horizon = values, metric, horizon  # the search's value of each re-run trial
        self.stream = stream or sys.stdout

    def __getstate__(self) -> dict[str, Any]:
        return {"values": self.values, "metric": self.metric, "horizon": self.horizon}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stdout

    def _fmt(self, value: float) -> str:
        return f"val accuracy {100 * value:.2f}%" if self.metric == "eval_acc" else f"val loss {value:.4f}"

    def _line(self, text: str) -> None:
        self.stream.write(f"{time.strftime('%H:%M:%S')}  {text}\n")
        self.stream.flush()

    def _name(self, trial: Any) -> str:
        return f"trial {trial.config['trial_id']} (seed {trial.config['seed']})"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(f"re-validation of {self._name(trial)} started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if RESTARTED in result:
            self._line(f"re-validation of {self._name(trial)}: {result[RESTARTED]}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        searched = self.values.get(int(trial.config["trial_id"]))
        if last.get("epoch") == self.horizon and self.metric in last and last.get("status") != "diverged":
            self._line(f"re-validated {self._name(trial)}: {self._fmt(last[self.metric])} at epoch {self.horizon} "
                       f"(search: {self._fmt(searched) if searched is not None else 'n/a'})")
        else:
            self._line(f"re-validation of {self._name(trial)} ended at epoch {last.get('epoch', 0)}: "
                       f"{last.get('reason') or last.get('status') or 'no result'}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(f"re-validation of {self._name(trial)} failed; it is left out of its trial's mean")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(f"re-validation of {self._name(trial)} crashed; retrying from its last checkpoint "
                   f"(attempt {trial.num_failures + 1})")


class FinalView(Callback):
    """One line per epoch of each final run."""

    def __init__(self, epochs: int, several: bool = False, stream: TextIO | None = None) -> None:
        self.epochs, self.several = epochs, several
        self.stream = stream or sys.stdout

    def __getstate__(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "several": self.several}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.epochs, self.several, self.stream = state["epochs"], state.get("several", False), sys.stdout

    def _name(self, trial: Any) -> str:
        return f"final run ({self._run(trial)})" if self.several else "final run"

    @staticmethod
    def _run(trial: Any) -> str:
        """Which run, in words: "seed 0", or "seed 0, baseline" for the seed recipe's run (final/baseline/seed-0)."""
        name = str(trial.config.get("run", f"seed-{trial.config.get('seed')}"))
        seed = f"seed {name.rsplit('seed-', 1)[-1]}"
        return f"{seed}, baseline" if name.startswith("baseline/") else seed

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if RESTARTED in result:
            self.stream.write(f"{time.strftime('%H:%M:%S')}  {self._name(trial)}: {result[RESTARTED]}\n")
        if "epoch" in result:
            seed = f" ({self._run(trial)})" if self.several else ""
            self.stream.write(
                f"{time.strftime('%H:%M:%S')}  final epoch {result['epoch']}/{self.epochs}{seed}: train loss "
                f"{result['train_loss']:.4f}, test accuracy {100 * result['eval_acc']:.2f}%, "
                f"{result['images_per_s']:.0f} img/s\n")
            self.stream.flush()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.stream.write(f"{self._name(trial)} crashed; retrying from its last checkpoint "
                          f"(attempt {trial.num_failures + 1})\n")
