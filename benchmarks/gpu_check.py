"""Where a new GPU machine stands, in one command: benchmarks/gpu_check.sh --data PATH.npz --out DIR [--quick]

Within --minutes in all (default 8), counted from the start to the summary's last write:

1. The bench suite (python -m recipe.bench --suite), within 37.5% of that: the seed's style, the
   fast path eager and in every compile mode, evaluation, and 1, 2 and 4 processes training at once
   on the GPU, the decisive measurements first; then what they say (the fastest setup for a
   250-epoch final run, compilation included; how many processes at once train the most).
2. The seed recipe on the real data (full width, the whole training set, evaluated on the test
   set) in that fastest setup (or, where its compilation leaves no time for 3 epochs, the setup
   that trains the most), for as many epochs as fit at the speed the bench measured in the time
   left, less a quarter of --minutes for the study where it will run and two process starts (or
   --run-seconds), with its OneCycle shortened to that length; killed (SIGKILL) once epoch N-2 is
   in metrics.csv, then resumed from its checkpoint for the last two epochs.
3. If ray and optuna import: a miniature study on the real data on this GPU (8 trials, horizon 6,
   4 trials sharing the GPU, a 2-epoch final run), in the time left (skipped under 100 s).

It writes DIR/summary.md (every figure in tables, the device named), DIR/bench.json, run.json and
study.json, and the logs of each step, and prints the summary. The summary is written after each
step too, so a check stopped from outside (a machine's time limit) leaves the figures of the steps
it finished. A step that fails or runs out of time is stopped with every process it started,
reported, and the next one runs; the exit status is 1 if any failed (a step skipped or cut short
for want of time is not a failure). --quick runs the same steps at toy sizes on a CPU (width 4, a
few hundred images, trained eagerly) in a minute or two: the tests run it.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()  # the check's clock: before torch and the data load, which count against --minutes
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recipe.cli import Parser, fail, kill_group  # noqa: E402
from recipe.data import DataError, load_npz  # noqa: E402


class Sizes:
    """What each step runs at: the real thing on a GPU, or toys on a CPU (--quick)."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        toy = ["--device", "cpu", "--width", "4", "--batch-size", "16", "--workers", "0"]
        self.bench = [*toy, "--steps", "2", "--warmup", "1", "--compile-backend", "eager"] if quick else \
            ["--steps", "60", "--warmup", "15", "--timeout", "150"]
        self.run = ["--device", "cpu", "--width", "4", "--subset", "512", "--eval-subset", "256", "--batch-size", "32",
                    "--workers", "0"] if quick else []
        self.train_images = 512 if quick else None  # None: the whole training set
        self.run_seconds = 2.0 if quick else None  # None: --run-seconds, or what --minutes leaves (toys: 3 epochs here)
        self.min_epochs = 3  # the kill comes after epoch N-2 >= 1
        self.study_min_s = 30.0 if quick else 100.0  # the miniature study took 91 s on an H100
        # The run trains as the bench's fastest final-run setup does; at toy size its compiled figures come
        # from the eager backend (compiling for real costs more than the toy run), so it trains eagerly.
        self.adopt_compile = not quick


# Shares of --minutes: the bench suite's budget, and what is kept for the study after the run.
DEFAULT_MINUTES, BENCH_SHARE, STUDY_SHARE = 8.0, 0.375, 0.25
START_S = 20  # a recipe process's start before its first epoch (Python, torch, CUDA, the data), each of two
WRITE_S = 5.0  # kept at the end of --minutes for writing the summary
NOT_REACHED = {"status": "not reached"}  # a step the check has not got to (yet, or ever if it was stopped)


def run_time(sizes: Sizes, left_s: float, total_s: float, study_possible: bool,
             run_seconds: float | None) -> tuple[float, float]:
    """(seconds the real-data run trains, its timeout) with left_s of the check's total_s left after the bench.

    The run gets what is left less the study's share (where a study will run) and two process starts, and
    trains 90% of that (checkpoints, an evaluation slower than a tenth of an epoch); --run-seconds, where
    given, instead (its timeout then follows it, not --minutes).
    """
    window = left_s - (STUDY_SHARE * total_s if study_possible else 0.0)
    if sizes.run_seconds is not None:
        return sizes.run_seconds, max(window, 60.0)
    if run_seconds is not None:
        return run_seconds, 3 * run_seconds + 300
    return 0.9 * (window - 2 * START_S), max(window, 60.0)


def study_toml(data: Path, quick: bool) -> str:
    common = f'''seed = 0
trials = {2 if quick else 8}

[objective]
metric = "eval_acc"

[space.lr]
low = 0.025
high = 0.4
log = true

[space.weight_decay]
low = 1e-4
high = 2e-3
log = true

[space.dropout]
low = 0.0
high = 0.5

[space.label_smoothing]
low = 0.0
high = 0.3

[sampler]
n_startup_trials = {2 if quick else 4}

[selection]
revalidate_top = {0 if quick else 2}  # --quick: the tests re-validate studies of their own
'''
    if quick:
        return common + f'''
[asha]
horizon = 2
grace_period = 1
reduction_factor = 2

[resources]
gpus = 0
cpus_per_trial = 1
max_failures = 1

[recipe]
data = {json.dumps(str(data))}
width = 4
batch_size = 32
device = "cpu"
workers = 0

[trial]
subset = 256
val_size = 128

[final]
epochs = 2
subset = 512
eval_subset = 256
'''
    return common + f'''
[asha]
horizon = 6
grace_period = 2
reduction_factor = 3

[resources]
gpus = 1
trials_per_gpu = 4
cpus_per_trial = 2
max_failures = 1

[recipe]
data = {json.dumps(str(data))}

[trial]
subset = 10000
val_size = 5000

[final]
epochs = 2
'''


class GpuMemory:
    """Samples the GPU's used memory with nvidia-smi while a step runs (nothing where it is absent)."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuMemory":
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:  # type: ignore[union-attr]
            try:
                self.samples.append(int(line.split()[0]))
            except (ValueError, IndexError):
                pass

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
            self._thread.join(timeout=5)  # type: ignore[union-attr]

    @property
    def peak_mib(self) -> int | None:
        return max(self.samples) if self.samples else None


def python_m(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                         "PYTHONUNBUFFERED": "1"}


def run_logged(argv: list[str], log: Path, timeout: float) -> tuple[int | None, float]:
    """Runs argv with its output into log; returns (exit status or None on a timeout, seconds)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                env=env(), start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            code = None
        finally:  # also on Ctrl-C, or the SIGTERM main() turns into an exit: its own session shields it from both
            kill_group(proc)  # nothing of a step cut short stays on the GPU
    return code, time.perf_counter() - t0


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# --- steps -------------------------------------------------------------------------------------

def bench_step(out: Path, sizes: Sizes, budget: float) -> dict[str, Any]:
    argv = python_m("recipe.bench", "--suite", *sizes.bench, "--budget", f"{budget:g}", "--json", str(out / "bench.json"))
    # The suite stops measuring at its budget; a minute more for the process's start and the last one's end.
    code, seconds = run_logged(argv, out / "bench.log", budget + 60)
    if code != 0 or not (out / "bench.json").exists():
        return {"status": f"failed: {'timed out' if code is None else last_line(out / 'bench.log')}", "seconds": seconds}
    report = json.loads((out / "bench.json").read_text())
    return {"status": "ok", "seconds": seconds, "report": report}


def run_plan(bench: dict[str, Any], sizes: Sizes, train_images: int, seconds: float) -> dict[str, Any]:
    """How the real-data run trains: its compile mode and as many epochs as fit in `seconds` at that setup's
    speed, its compilations (in the run, and again in the resumed run) included.

    The setup is the bench's fastest for a final run (at toy size the eager one: the bench compiled with the
    eager backend there), unless it cannot train the fewest epochs in `seconds` (a long compilation, a short
    check): then the setup that trains the most epochs in them. Without the bench's figures: the fewest
    epochs, eagerly.
    """
    final = bench.get("report", {}).get("conclusions", {}).get("final_run")
    if final is None:
        return {"compile": "off", "epochs": sizes.min_epochs, "why": "the bench measured no training speed"}
    setups = final["setups"] if sizes.adopt_compile else [s for s in final["setups"] if s["compile"] == "off"]
    if not setups:
        return {"compile": "off", "epochs": sizes.min_epochs, "why": "the bench measured no eager training speed"}

    def fit(setup: dict[str, Any]) -> int:
        # An epoch: its training images at the setup's speed, and its evaluation (a tenth of that, at most).
        epoch_s = 11 * train_images / (10 * setup["images_per_s"])
        return int((seconds - 2 * setup["compiling_s"]) / epoch_s)

    fastest = next((s for s in setups if s["name"] == final["fastest"]), None)
    if fastest is not None and fit(fastest) >= sizes.min_epochs:
        chosen, why = fastest, "the bench's fastest setup for a final run"
    else:
        chosen = max(setups, key=fit)
        why = ("at toy size the run trains eagerly" if not sizes.adopt_compile else
               f"the bench's fastest for a final run ({final['fastest']}) would not train {sizes.min_epochs} epochs "
               f"in {seconds:.0f} s; this setup trains the most in them")
    return {"compile": chosen["compile"], "epochs": max(sizes.min_epochs, fit(chosen)), "why": why}


def run_step(out: Path, data: Path, sizes: Sizes, run_seconds: float, bench: dict[str, Any],
             timeout: float) -> dict[str, Any]:
    train_images = sizes.train_images or len(load_npz(data)[0])
    plan = run_plan(bench, sizes, train_images, run_seconds)
    epochs = plan["epochs"]
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    compiling = ["--compile", plan["compile"]] if plan["compile"] != "off" else []
    argv = python_m("recipe.train", "--data", str(data), "--epochs", str(epochs), "--out", str(run_dir), *sizes.run,
                    *compiling, "--no-progress")
    record: dict[str, Any] = {"epochs": epochs, "train_images": train_images, "compile": plan["compile"],
                              "compile_why": plan["why"], "command": " ".join(argv[1:])}
    metrics = run_dir / "metrics.csv"
    kill_after = epochs - 2
    t0 = time.perf_counter()
    with GpuMemory() as memory:
        with open(out / "run.log", "w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                    env=env(), start_new_session=True)
            try:
                while proc.poll() is None and time.perf_counter() - t0 < timeout:
                    if metrics.exists() and len(metrics.read_text().splitlines()) - 1 >= kill_after:
                        break
                    time.sleep(0.05)
            finally:
                kill_group(proc)  # the kill the run must survive, or the end of its time
        if not metrics.exists() or len(metrics.read_text().splitlines()) - 1 < kill_after:
            why = f"timed out after {timeout:.0f} s" if time.perf_counter() - t0 >= timeout else last_line(out / "run.log")
            return record | {"status": f"failed before epoch {kill_after}: {why}"}
        killed_after = len(metrics.read_text().splitlines()) - 1
        record["killed_after_epoch"] = killed_after
        resume = python_m("recipe.train", "--out", str(run_dir), "--resume", "--no-progress")
        record["resume_command"] = " ".join(resume[1:])
        code, _ = run_logged(resume, out / "resume.log", max(1.0, timeout - (time.perf_counter() - t0)))
    record["wall_s"] = time.perf_counter() - t0
    record["gpu_memory_peak_mib"] = memory.peak_mib
    if code != 0:
        return record | {"status": f"resume failed: {'timed out' if code is None else last_line(out / 'resume.log')}"}
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    resumed = f"resuming after epoch {killed_after}" in (out / "resume.log").read_text()
    epochs_once = [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    per_epoch = []
    for r in rows:
        train_s = train_images / float(r["images_per_s"])
        per_epoch.append({"epoch": int(r["epoch"]), "lr": float(r["lr"]), "train_loss": float(r["train_loss"]),
                          "train_acc": float(r["train_acc"]), "test_loss": float(r["eval_loss"]),
                          "test_acc": float(r["eval_acc"]), "images_per_s": float(r["images_per_s"]),
                          "train_s": train_s, "eval_s": float(r["epoch_time_s"]) - train_s})
    ok = summary["status"] == "completed" and resumed and epochs_once
    return record | {
        "status": "ok" if ok else "failed: the resumed run did not continue where it was killed",
        "resumed_from_checkpoint": resumed, "each_epoch_once": epochs_once, "final_test_acc": summary["final_eval_acc"],
        "training_wall_s": summary["wall_time_s"], "per_epoch": per_epoch, "device": summary["device"],
    }


def study_step(out: Path, data: Path, sizes: Sizes, timeout: float) -> dict[str, Any]:
    toml = out / "gpu_check_study.toml"
    toml.write_text(study_toml(data, sizes.quick))
    results = out / "study"
    if results.exists():
        shutil.rmtree(results)
    argv = python_m("search.run", "--study", str(toml), "--results-dir", str(results))
    with GpuMemory() as memory:
        code, seconds = run_logged(argv, out / "study.log", timeout)
    record: dict[str, Any] = {"command": " ".join(argv[1:]), "wall_s": seconds, "gpu_memory_peak_mib": memory.peak_mib}
    if code != 0:
        return record | {"status": f"failed: {'timed out' if code is None else last_line(out / 'study.log')}"}
    root = results / toml.stem
    best = json.loads((root / "best.json").read_text())
    final = json.loads((root / "final" / "summary.json").read_text())
    with open(root / "trials.csv", newline="") as f:
        states = [row["state"] for row in csv.DictReader(f)]
    return record | {
        "status": "ok", "trials": len(states), "complete": states.count("complete"), "pruned": states.count("pruned"),
        "failed": states.count("failed"), "best_trial": best["trial_id"], "best_value": best["value"],
        "best_mean_value": best["mean_value"], "best_runs": len(best["values"]),
        "final_test_acc": final["mean_final_eval_acc"], "final_seeds": len(final["seeds"]),
        "final_epochs": final["runs"][0]["epochs_run"],
    }


# --- summary -----------------------------------------------------------------------------------

def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def command_line(args: argparse.Namespace) -> str:
    given = [f"--minutes {args.minutes:g}"] if args.minutes != DEFAULT_MINUTES else []
    given += [f"--run-seconds {args.run_seconds:g}"] if args.run_seconds is not None else []
    return " ".join([f"--data {args.data} --out {args.out}", *given, *(["--quick"] if args.quick else [])])


def summary_md(args: argparse.Namespace, bench: dict, run: dict, study: dict, total_s: float) -> str:
    env_ = bench.get("report", {}).get("environment", {})
    device = env_.get("device") or run.get("device") or "unknown device"
    lines = [f"# gpu_check: {device}", "",
             f"`benchmarks/gpu_check.sh {command_line(args)}`, {time.strftime('%Y-%m-%d %H:%M')}, {total_s:.0f} s in all "
             f"(of {args.minutes:g} minutes).", "",
             "| | |", "| --- | --- |"]
    for key in ("device", "gpu_memory_mib", "torch", "cuda", "cudnn", "python", "host_cpus"):
        if key in env_:
            lines.append(f"| {key} | {env_[key]} |")
    lines += ["", f"## 1. Bench suite ({bench['status']}, {bench.get('seconds', 0):.0f} s)", ""]
    if "report" in bench:
        from recipe.bench import table
        lines += ["```", table(bench["report"]), "```", "",
                  "`python -m recipe.bench --suite " + " ".join(Sizes(args.quick).bench) + "`; every record in bench.json."]
    epochs = f", {run['epochs']} epochs" if "epochs" in run else ""
    lines += ["", f"## 2. The seed recipe on the data{epochs}, killed and resumed ({run['status']})", ""]
    if "per_epoch" in run:
        lines += [f"`{run['command']}` (compile {run['compile']}: {run['compile_why']}), SIGKILL once epoch "
                  f"{run['killed_after_epoch']} was in metrics.csv, then "
                  f"`{run['resume_command']}`: resumed from the checkpoint: {run['resumed_from_checkpoint']}; each epoch "
                  f"once in metrics.csv: {run['each_epoch_once']}. Final test accuracy **{pct(run['final_test_acc'])}**; "
                  f"training wall time {run['training_wall_s']:.1f} s; GPU memory peak "
                  f"{run['gpu_memory_peak_mib'] if run['gpu_memory_peak_mib'] is not None else '-'} MiB.", "",
                  "| epoch | lr | train loss | train acc | test loss | test acc | train img/s | train s | eval s |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for e in run["per_epoch"]:
            lines.append(f"| {e['epoch']} | {e['lr']:.4g} | {e['train_loss']:.3f} | {pct(e['train_acc'])} | "
                         f"{e['test_loss']:.3f} | {pct(e['test_acc'])} | {e['images_per_s']:.0f} | {e['train_s']:.2f} | "
                         f"{e['eval_s']:.2f} |")
    lines += ["", f"## 3. A miniature study ({study['status']})", ""]
    if study.get("status") == "ok":
        lines += [f"`{study['command']}`: {study['wall_s']:.0f} s end to end; {study['trials']} trials: "
                  f"{study['complete']} complete, {study['pruned']} stopped by ASHA, {study['failed']} failed; best trial "
                  f"{study['best_trial']} ({pct(study['best_value'])} validation accuracy"
                  f"{revalidated(study)}); final run"
                  f"{'s' if study['final_seeds'] > 1 else ''} {pct(study['final_test_acc'])} test accuracy"
                  f"{' (mean of ' + str(study['final_seeds']) + ' seeds)' if study['final_seeds'] > 1 else ''} after "
                  f"{study['final_epochs']} epochs; GPU memory peak "
                  f"{study['gpu_memory_peak_mib'] if study['gpu_memory_peak_mib'] is not None else '-'} MiB."]
    return "\n".join(lines) + "\n"


def revalidated(study: dict) -> str:
    """', mean X over N runs after re-validation' where the best trial was trained again; nothing where it was not."""
    if study["best_runs"] < 2:
        return ""
    return f", mean {pct(study['best_mean_value'])} over {study['best_runs']} runs after re-validation"


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="benchmarks/gpu_check.sh", description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data", required=True, help="CIFAR-100 as a .npz of arrays (x_train, y_train, x_test, y_test)")
    parser.add_argument("--out", required=True, help="directory for summary.md, the JSON files and the logs")
    parser.add_argument("--quick", action="store_true", help="the same steps at toy sizes on a CPU")
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                        help=f"the time the check may take in all (default: 8): the bench suite's budget is "
                             f"{100 * BENCH_SHARE:g}%% of it, {100 * STUDY_SHARE:g}%% is kept for the study, the run "
                             f"trains in the rest")  # %%: argparse formats help with %
    parser.add_argument("--run-seconds", type=float,
                        help="how long the real-data run should train, at the bench's speed (default: what --minutes "
                             "leaves it)")
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    try:
        load_npz(data)
    except DataError as e:
        fail(f"--data: {e}")
    if args.run_seconds is not None and args.run_seconds <= 0:
        fail(f"--run-seconds {args.run_seconds:g}: must be > 0")
    if args.minutes <= 0:
        fail(f"--minutes {args.minutes:g}: must be > 0")
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: is a file, not a directory")
    try:
        import torch  # noqa: F401
    except ImportError:
        fail(f"{sys.executable} cannot import torch: run with the Python that has the project's packages "
             f"(PYTHON=.venv/bin/python benchmarks/gpu_check.sh ..., or activate its virtual environment)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as e:
        fail(f"--out {out}: cannot write there ({e.strerror or e})")
    data = data.resolve()
    sizes = Sizes(args.quick)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the running step's processes go with it
    from recipe.checkpoint import write_json, write_text

    for name in ("summary.md", "bench.json", "run.json", "study.json"):  # an earlier check's, in a reused --out
        (out / name).unlink(missing_ok=True)
    t0 = STARTED
    total = 60 * args.minutes
    deadline = t0 + total - WRITE_S  # the summary is written within --minutes too

    def left() -> float:
        return deadline - time.perf_counter()

    def write(bench: dict, run: dict, study: dict) -> str:
        """summary.md, run.json and study.json as they stand: after each step, so that a check stopped from
        outside (a machine's time limit) leaves the figures of the steps it finished."""
        write_json(out / "run.json", run)
        write_json(out / "study.json", study)
        text = summary_md(args, bench, run, study, time.perf_counter() - t0)
        write_text(out / "summary.md", text)
        return text

    print("1/3 bench suite ...", flush=True)
    bench = bench_step(out, sizes, BENCH_SHARE * total)
    print(f"    {bench['status']} ({bench['seconds']:.0f} s)", flush=True)
    write(bench, NOT_REACHED, NOT_REACHED)
    print("2/3 the seed recipe on the data, killed and resumed ...", flush=True)
    study_possible = subprocess.run([sys.executable, "-c", "import ray, optuna"], capture_output=True, env=env()).returncode == 0
    run_seconds, run_timeout = run_time(sizes, left(), total, study_possible, args.run_seconds)
    run = run_step(out, data, sizes, run_seconds, bench, timeout=run_timeout)
    if args.run_seconds is None and "timed out" in run["status"]:
        run["status"] = f"cut short: the check's {args.minutes:g} minutes ran out ({run['status']})"
    print(f"    {run['status']}", flush=True)
    write(bench, run, NOT_REACHED)
    print("3/3 a miniature study ...", flush=True)
    if not study_possible:
        study = {"status": "skipped: ray or optuna is not installed"}
    elif left() < sizes.study_min_s:
        study = {"status": f"skipped: {max(left(), 0):.0f} s of the check's {args.minutes:g} minutes were left, "
                           f"the study needs about {sizes.study_min_s:.0f}"}
    else:
        study = study_step(out, data, sizes, timeout=left())
        if study["status"] == "failed: timed out":
            study["status"] = f"cut short: the check's {args.minutes:g} minutes ran out"
    print(f"    {study['status']}", flush=True)
    print(write(bench, run, study))
    failed = [s for s in (bench, run, study) if s["status"] != "ok" and not s["status"].startswith(("skipped", "cut short"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
