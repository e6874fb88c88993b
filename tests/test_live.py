"""The live view of a study as a person sees it: on a terminal (one status line redrawn in place under
the events) and in a log file (events, and the status once a minute)."""
import io
import re
from types import SimpleNamespace

import pytest

from search import live
from search import study as studies

SPEC = studies.load("smoke").replace(metric="eval_acc")  # the results below carry eval_acc
PARAMS = dict(lr=0.1, weight_decay=5e-4, dropout=0.2, label_smoothing=0.1)


class Searcher:
    """What the view asks of the study's searcher: trial numbers, how each ended, the best so far."""

    def __init__(self) -> None:
        self.numbers = {"a": 0, "b": 1, "c": 2}
        self.ended: dict[str, tuple[str, str | None]] = {}

    def number(self, trial_id):
        return self.numbers.get(trial_id)

    def final_state(self, trial_id):
        return self.ended.get(trial_id, (None, None))[0]

    def failure_reason(self, trial_id):
        return self.ended.get(trial_id, (None, None))[1]

    def tally(self):
        return {"complete": 0, "pruned": 0, "fail": 0}

    def best_so_far(self):
        return None


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def screen(text: str) -> list[str]:
    """The lines a terminal shows after `text`: \r then ESC[2K erases the current line."""
    lines, line = [], ""
    for token in re.split(r"(\r\x1b\[2K|\n)", text):
        if token == "\r\x1b[2K":
            line = ""
        elif token == "\n":
            lines.append(line)
            line = ""
        else:
            assert "\r" not in token and "\x1b" not in token, repr(token)
            line += token
    return lines + ([line] if line else [])


def trial(trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config=PARAMS, num_failures=0, max_failures=2)


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: now[0])
    return now


def run_a_small_study(view: live.LiveView, searcher: Searcher, clock: list[float], snapshot: list) -> None:
    view.setup()
    view.on_trial_start(0, [], trial("a"))
    view.on_trial_start(0, [], trial("b"))
    for epoch in (1, 2):
        clock[0] += 2
        view.on_trial_result(0, [], trial("a"), {"epoch": epoch, "eval_acc": 0.1 * epoch})
        view.on_trial_result(0, [], trial("b"), {"epoch": epoch, "eval_acc": 0.05 * epoch})
    snapshot.append(view.stream.getvalue())
    searcher.ended["b"] = ("pruned", None)
    view.on_trial_complete(0, [], trial("b"))
    clock[0] += 2
    view.on_trial_result(0, [], trial("a"), {"epoch": 3, "eval_acc": 0.3})
    searcher.ended["a"] = ("complete", None)
    view.on_trial_complete(0, [], trial("a"))
    view.on_trial_start(0, [], trial("c"))
    view.on_trial_recover(0, [], SimpleNamespace(trial_id="c", config=PARAMS, num_failures=0, max_failures=2))
    searcher.ended["c"] = ("fail", "diverged: non-finite loss at epoch 1")
    view.on_trial_complete(0, [], trial("c"))
    view.on_experiment_end([])


EVENTS = [
    "trial 0 started: lr 0.1, wd 0.0005, dropout 0.200, smoothing 0.100",
    "trial 1 started: lr 0.1, wd 0.0005, dropout 0.200, smoothing 0.100",
    "trial 1 pruned: stopped by ASHA at epoch 2, val accuracy 10.00%",
    "trial 0 complete: ran the whole horizon, val accuracy 30.00%  (best so far)",
    "trial 2 started: lr 0.1, wd 0.0005, dropout 0.200, smoothing 0.100",
    "trial 2 crashed; retrying from its last checkpoint (attempt 1 of 3)",
    "trial 2 failed: diverged: non-finite loss at epoch 1",
]
FINAL_STATUS = "[3/8 done: 1 complete, 1 pruned, 1 failed; best: val accuracy 30.00% (trial 0); running: none]"


def without_time(line: str) -> str:
    assert re.match(r"\d\d:\d\d:\d\d  ", line), line
    return line[10:]


def test_on_a_terminal_events_scroll_and_one_status_line_is_redrawn_under_them(clock):
    searcher, stream, seen = Searcher(), Stream(tty=True), []
    run_a_small_study(live.LiveView(searcher, SPEC, stream=stream), searcher, clock, seen)

    midway = screen(seen[0])
    assert [without_time(line) for line in midway[:-1]] == EVENTS[:2]
    assert midway[-1] == "[0/8 done: 0 complete, 0 pruned, 0 failed; best: none yet; running: #0@2, #1@2]"

    final = screen(stream.getvalue())
    assert [without_time(line) for line in final[:-1]] == EVENTS
    assert final[-1] == FINAL_STATUS
    assert stream.getvalue().endswith("\n")  # the shell's prompt starts on a line of its own


def test_in_a_log_file_there_are_only_whole_lines_and_the_status_at_most_once_a_minute(clock):
    searcher, stream, seen = Searcher(), Stream(tty=False), []
    run_a_small_study(live.LiveView(searcher, SPEC, stream=stream, interval_s=60), searcher, clock, seen)
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = [without_time(line) for line in text.splitlines()]
    assert [line for line in lines if not line.startswith("[")] == EVENTS
    # Six seconds of study: the status once as it starts, and once at the end.
    assert [line for line in lines if line.startswith("[")] == [
        "[0/8 done: 0 complete, 0 pruned, 0 failed; best: none yet; running: #0@0]", FINAL_STATUS]


def test_in_a_log_file_the_status_comes_again_after_a_minute(clock):
    searcher, stream = Searcher(), Stream(tty=False)
    view = live.LiveView(searcher, SPEC, stream=stream, interval_s=60)
    view.setup()
    view.on_trial_start(0, [], trial("a"))
    for epoch, seconds in enumerate((20, 20, 30), start=1):
        clock[0] += seconds
        view.on_trial_result(0, [], trial("a"), {"epoch": epoch, "eval_acc": 0.1})
    statuses = [without_time(line) for line in stream.getvalue().splitlines() if line[10:].startswith("[")]
    assert [s.rsplit("running: ", 1)[1] for s in statuses] == ["#0@0]", "#0@3]"]


def test_re_validation_says_what_each_re_run_found_beside_the_search(clock):
    out = Stream(tty=False)
    view = live.RevalidationView({2: 0.52, 7: 0.45}, "eval_acc", horizon=4, stream=out)
    ok = SimpleNamespace(config={"trial_id": 2, "seed": 1}, last_result={"epoch": 4, "eval_acc": 0.36}, num_failures=0)
    bad = SimpleNamespace(config={"trial_id": 7, "seed": 1}, last_result={"epoch": 2, "status": "diverged"},
                          num_failures=0)
    view.on_trial_start(0, [], ok)
    view.on_trial_complete(0, [], ok)
    view.on_trial_complete(0, [], bad)
    lines = [line.split("  ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == ["re-validation of trial 2 (seed 1) started",
                     "re-validated trial 2 (seed 1): val accuracy 36.00% at epoch 4 (search: val accuracy 52.00%)",
                     "re-validation of trial 7 (seed 1) ended at epoch 2: diverged"]


@pytest.mark.parametrize("several", [False, True])
def test_each_final_epoch_is_a_line_naming_its_seed_where_there_are_several(several):
    out = Stream(tty=False)
    view = live.FinalView(epochs=250, several=several, stream=out)
    trial = SimpleNamespace(config={**PARAMS, "seed": 2})
    view.on_trial_result(0, [], trial, {"epoch": 3, "train_loss": 1.5, "eval_acc": 0.5, "images_per_s": 1000.0})
    seed = " (seed 2)" if several else ""
    assert out.getvalue().split("  ", 1)[1] == (f"final epoch 3/250{seed}: train loss 1.5000, test accuracy 50.00%, "
                                               f"1000 img/s\n")


def test_a_baseline_runs_final_epochs_are_named_as_the_seed_recipes():
    out = Stream(tty=False)
    view = live.FinalView(epochs=250, several=True, stream=out)
    for run in ("seed-1", "baseline/seed-1"):
        view.on_trial_result(0, [], SimpleNamespace(config={"run": run}),
                             {"epoch": 3, "train_loss": 1.5, "eval_acc": 0.5, "images_per_s": 1000.0})
    lines = [line.split("  ", 1)[1].split(":")[0] for line in out.getvalue().splitlines()]
    assert lines == ["final epoch 3/250 (seed 1)", "final epoch 3/250 (seed 1, baseline)"]
