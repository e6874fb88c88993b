"""Training throughput: every speed question about the recipe's step, answered by measurement.

    python -m recipe.bench [SETUP] [--paths model-step,fast,classic,eval]   the paths, in this process
    python -m recipe.bench [SETUP] --concurrent N         N processes training at once on one device
    python -m recipe.bench --suite                        everything below (on a GPU each in its own process)

Each training path runs the trainer's own step (engine.TrainStep: forward, loss, backward,
clipping, SGD, OneCycle) on synthetic CIFAR-shaped data, timed between two device
synchronisations after untimed warm-up steps (which also compile, where the setup compiles).
"model-step" feeds one batch already on the device, normalised: the ceiling of the data paths.
"fast" is the default pipeline (dataset on the device, batched augmentation); "classic" is
torchvision transforms on PIL images in a DataLoader. "eval" is the evaluation pass, in images/s.

The suite measures, the decisive ones first: the seed's style (classic, fp32, contiguous), fast
eager, the model step, evaluation, fast compiled in the mode likeliest to pay (reduce-overhead on
a GPU; on a CPU only the default mode: the others differ only on a GPU), 1, 2 and 4 processes
training at once on one device (1 and 2 on a CPU) in the setup given (Ray's fractional-GPU trials),
the other compile modes, the processes again under CUDA MPS where nvidia-cuda-mps-control exists
(the bench starts and stops its own daemon), classic with the recipe's settings, and on a GPU
last, fast compiled with max-autotune-no-cudagraphs (the longest to compile). Where the recipe's
settings resolve to the seed's setup on the device (--amp and --channels-last off on a CPU), that
record is the seed style's, marked "same_as".
Every measurement is a record of the JSON report, with its setup; one that fails, runs out of time
or is left when the suite's --budget is spent says so and the suite goes on. Under the table (and
as "conclusions" in the JSON): what the figures decide, see conclusions().
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from recipe.checkpoint import write_json
from recipe.cli import Parser, fail, flag, add_config_flags, given_settings, kill_group
from recipe.config import RecipeConfig, RecipeError
from recipe.data import SYNTHETIC_TEST, SYNTHETIC_TRAIN, Arrays, synthetic
from recipe.engine import DeviceData, LoaderData, evaluate, train_epoch
from recipe.model import ResNet34
from recipe.train import amp_dtype, device_name, make_step, resolve_device, tune_backends, use_channels_last

PATHS = ("model-step", "fast", "classic", "eval")
SETUP = ("width", "batch_size", "device", "workers", "amp", "channels_last", "compile")
SUITE_CONCURRENCY = {"cuda": (1, 2, 4), "cpu": (1, 2)}  # on a CPU, processes only share its cores
EVAL_IMAGES = {"cuda": 10_000, "cpu": 2_000}
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # CIFAR-100's: what a final run trains on and is evaluated on each epoch
MPS_CONTROL = "nvidia-cuda-mps-control"
_clock = time.monotonic  # the suite's budget runs on it (tests replace it)
# Left of the suite's budget, below which a measurement is not started: on a GPU a process's start alone takes ~10 s.
MIN_LEFT_S = {"cuda": 15.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forever(make_epoch: Callable[[], Iterator]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from make_epoch()


def _repeat(arrays: Arrays, n: int) -> Arrays:
    reps = -(-n // len(arrays))
    return Arrays(arrays.x.repeat(reps, 0)[:n], arrays.y.repeat(reps, 0)[:n]) if n != len(arrays) else arrays


def _images(n_train: int = 1, n_test: int = 1) -> tuple[Arrays, Arrays]:
    """Synthetic CIFAR-shaped images, no more than a measurement uses (all of them take a second of CPU to make)."""
    return synthetic(min(n_train, SYNTHETIC_TRAIN), min(n_test, SYNTHETIC_TEST))


def setup_of(config: RecipeConfig, device: torch.device) -> dict[str, Any]:
    """What a measurement ran with, as the recipe resolved it on this device."""
    dtype = amp_dtype(config, device)
    return {"width": config.width, "batch_size": config.batch_size, "amp": str(dtype).replace("torch.", "") if dtype else "off",
            "channels_last": use_channels_last(config, device), "compile": config.compile, "workers": config.workers}


def environment(device: torch.device) -> dict[str, Any]:
    env = {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
           "host_cpus": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "gpu_memory_mib": props.total_memory // 2**20}
    return env


def cudagraph_skips() -> int:
    """How many times inductor ran a graph without CUDA graphs in reduce-overhead mode, in this process."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


def measure(config: RecipeConfig, path: str, steps: int, warmup: int, *, compile_backend: str = "inductor",
            barrier: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Images per second of one path with the setup `config` describes, in this process.

    barrier() runs between the warm-up and the timed steps (concurrent processes start together).
    """
    device = resolve_device(config)
    tune_backends(device)
    channels_last = use_channels_last(config, device)
    torch.manual_seed(config.seed)
    model = ResNet34(width=config.width, dropout=config.dropout).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    record = {"path": path, **setup_of(config, device), "steps": steps, "warmup": warmup,
              "threads": torch.get_num_threads()}

    if path == "eval":
        n_eval = EVAL_IMAGES.get(device.type, EVAL_IMAGES["cpu"])
        data = DeviceData(_repeat(_images(n_test=n_eval)[1], n_eval), device, channels_last)
        dtype = amp_dtype(config, device)
        passes = lambda n: [evaluate(model, data.eval_batches(4 * config.batch_size), device=device,  # noqa: E731
                                     amp_dtype=dtype) for _ in range(n)]
        # Whole passes (each meets every batch shape), as many as hold `steps` evaluation batches: 4 passes of
        # 10,000 images at the GPU suite's 60 steps of batch 128, not 60 of them (the suite's time is its budget's).
        timed = max(1, math.ceil(steps * 4 * config.batch_size / n_eval))
        passes(1)  # untimed: it meets every batch shape (evaluation is not compiled)
        barrier()
        _sync(device)
        t0, wall0 = time.perf_counter(), time.time()
        passes(timed)
        _sync(device)
        seconds = time.perf_counter() - t0
        return record | {"passes": timed, "images": timed * n_eval, "images_per_s": timed * n_eval / seconds,
                         "seconds_per_10k": seconds / timed * 10_000 / n_eval, "t_start": wall0, "t_end": time.time()}

    n_train = (steps + warmup) * config.batch_size
    arrays = _repeat(_images(n_train=n_train)[0], n_train)  # whole batches only: one shape throughout
    if path == "model-step":
        x0, y0 = next(DeviceData(arrays, device, channels_last).train_batches(config.batch_size, config.erasing_p))
        source: Iterator = itertools.repeat((x0, y0))
    elif path == "fast":
        fast = DeviceData(arrays, device, channels_last)
        source = _forever(lambda: fast.train_batches(config.batch_size, config.erasing_p))
    elif path == "classic":
        classic = LoaderData(arrays, device, config.workers, True, config.batch_size, config.erasing_p, channels_last)
        source = _forever(lambda: iter(classic))
    else:
        raise ValueError(f"unknown path {path!r}")
    # The schedule's length changes what the lr is, not how fast a step runs: long enough for any warm-up.
    step = make_step(model, config, device, max(steps + warmup, 100), compile_backend=compile_backend)
    graphed = config.compile == "reduce-overhead" and device.type == "cuda" and compile_backend == "inductor"
    skips_before = cudagraph_skips() if graphed else 0

    def steps_of(n: int) -> None:
        train_epoch(step, itertools.islice(source, n), device=device)

    t0 = time.perf_counter()
    steps_of(warmup)
    _sync(device)
    warmup_s = time.perf_counter() - t0
    barrier()
    t0, wall0 = time.perf_counter(), time.time()
    steps_of(steps)
    _sync(device)
    seconds = time.perf_counter() - t0
    record |= {"images": steps * config.batch_size, "images_per_s": steps * config.batch_size / seconds,
               "ms_per_step": 1000 * seconds / steps, "warmup_s": warmup_s, "t_start": wall0, "t_end": time.time()}
    if config.compile != "off":
        # What the warm-up cost beyond as many steady steps: compilation (and CUDA graph recording).
        record["compile_s"] = max(0.0, warmup_s - warmup * seconds / steps)
    if graphed:
        # Inductor falls back to plain compiled kernels, silently, where it cannot record a CUDA graph (at
        # compile time, or at a replay that would be unsafe): then this mode measures no CUDA graphs. It
        # counts each time.
        record["cudagraph_skips"] = cudagraph_skips() - skips_before
    return record


# --- processes ---------------------------------------------------------------------------------

def _child_argv(config: RecipeConfig, path: str, steps: int, warmup: int, backend: str) -> list[str]:
    argv = [sys.executable, "-m", "recipe.bench", "--paths", path, "--steps", str(steps), "--warmup", str(warmup),
            "--compile-backend", backend]
    for name in SETUP:
        argv += [flag(name), str(getattr(config, name))]
    return argv


def _read_child(json_path: Path) -> dict[str, Any]:
    return json.loads(json_path.read_text())["measurements"][0]


def _failure(proc: subprocess.CompletedProcess | None, timeout: float | None = None) -> str:
    if proc is None:
        return f"timed out after {timeout:.0f} s"
    lines = [line for line in (proc.stderr or "").strip().splitlines() if line.strip()]
    return f"failed (exit {proc.returncode}): {lines[-1] if lines else 'no message'}"


def cold_caches(env: dict[str, str], root: Path) -> dict[str, str]:
    """env with empty on-disk compile caches under root: a compile time measured as a new machine meets it, not as
    the suite's earlier measurements (or an earlier run of it) left inductor's and Triton's caches."""
    return env | {"TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"), "TRITON_CACHE_DIR": str(root / "triton")}


def in_subprocess(config: RecipeConfig, path: str, steps: int, warmup: int, backend: str, timeout: float) -> dict[str, Any]:
    """One measurement in a fresh process (its own compile caches and device memory), within `timeout` seconds.
    On a timeout the process and every one it started (inductor's compile workers) are killed."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        out = Path(tmp) / "m.json"
        proc = subprocess.Popen([*_child_argv(config, path, steps, warmup, backend), "--json", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                env=cold_caches(dict(os.environ), Path(tmp)), start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"path": path, **_setup_dict(config), "status": _failure(None, timeout)}
        finally:
            kill_group(proc)
        if proc.returncode != 0 or not out.exists():
            return {"path": path, **_setup_dict(config),
                    "status": _failure(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))}
        return _read_child(out) | {"status": "ok"}


def in_this_process(config: RecipeConfig, path: str, steps: int, warmup: int, backend: str) -> dict[str, Any]:
    """One measurement here, where the device is a CPU: there is no device memory or CUDA context to keep apart,
    and a process of its own would cost more than the measurement (a Python that imports torch). Dynamo's caches
    start afresh for a compiled one. A measurement that fails is a record that says so."""
    if config.compile != "off":
        torch._dynamo.reset()
    try:
        return measure(config, path, steps, warmup, compile_backend=backend) | {"status": "ok"}
    except Exception as e:
        return {"path": path, **_setup_dict(config), "status": f"failed: {type(e).__name__}: {e}"}


def _setup_dict(config: RecipeConfig) -> dict[str, Any]:
    return setup_of(config, resolve_device(config))


def mps_available(device: torch.device) -> bool:
    return device.type == "cuda" and shutil.which(MPS_CONTROL) is not None


class MpsDaemon:
    """A CUDA MPS control daemon of our own (own pipe and log directories), stopped on exit.

    On exit, `clients` is the number of CUDA processes that reached it (its control.log's "NEW CLIENT"
    lines): a process that cannot reach the daemon runs as it would without MPS, saying nothing. A daemon
    whose quit hangs (quit waits for its servers and their clients) is killed with its servers, by the
    PIDs its log gives (each checked to be an MPS process first), and `stop_note` says so.
    """

    QUIT_TIMEOUT_S = 30.0
    PIDS = re.compile(r"(?:Control +(\d+)\] Starting control daemon|Starting new server (\d+))")

    def __init__(self, root: Path) -> None:
        self.env = os.environ | {"CUDA_MPS_PIPE_DIRECTORY": str(root / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(root / "log")}
        self.log = root / "log" / "control.log"
        (root / "pipe").mkdir()
        (root / "log").mkdir()
        self.clients, self.stop_note = 0, ""

    def __enter__(self) -> "MpsDaemon":
        subprocess.run([MPS_CONTROL, "-d"], env=self.env, check=True, capture_output=True, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            subprocess.run([MPS_CONTROL], input="quit\n", env=self.env, capture_output=True, text=True,
                           timeout=self.QUIT_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            killed = [pid for pid in self._pids() if _kill_mps_process(pid)]
            self.stop_note = (f"the MPS daemon did not quit ({type(e).__name__}): "
                              + (f"killed it and its servers (PIDs {', '.join(map(str, killed))})" if killed
                                 else "found no MPS process of it to kill"))
        self.clients = self._log().count("NEW CLIENT")

    def _log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def _pids(self) -> list[int]:
        """The control daemon's PID and its servers', as its log gives them ("[date time Control PID] Starting
        control daemon ...", "... Starting new server PID for user UID")."""
        return [int(a or b) for a, b in self.PIDS.findall(self._log())]


def _kill_mps_process(pid: int) -> bool:
    """SIGKILL pid if it is an MPS process (its name, /proc/PID/comm, as the kernel cuts it to 15 characters, is
    "nvidia-cuda-mps"): a PID from a log may have ended and been given to another process since."""
    try:
        if not Path(f"/proc/{pid}/comm").read_text().startswith(MPS_CONTROL[:15]):
            return False
        os.kill(pid, signal.SIGKILL)
        return True
    except OSError:
        return False


def concurrent(config: RecipeConfig, n: int, steps: int, warmup: int, backend: str, timeout: float,
               mps: bool = False) -> dict[str, Any]:
    """n processes training the fast path at once on one device: aggregate and per-process images/s.

    The processes warm up, wait for each other, then run their timed steps together; the aggregate is
    all their images over the time from the first start to the last end. Each process gets its share of
    this one's CPU threads (at least one), as a study's trials each get their part of the CPUs: n processes
    of all the threads each fight over the cores (on 2 cores, 2 such processes ran 60x slower than 1 alone).
    """
    threads = max(1, torch.get_num_threads() // n)
    record: dict[str, Any] = {"path": "fast", **_setup_dict(config), "processes": n, "mps": mps}
    daemon = None
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        env = dict(os.environ)
        if mps:
            try:
                daemon = MpsDaemon(root)
                env = dict(stack.enter_context(daemon).env)
            except (OSError, subprocess.SubprocessError) as e:
                return record | {"status": f"failed: could not start the MPS daemon ({e})"}
        env = cold_caches(env, root)
        env["OMP_NUM_THREADS"] = str(threads)  # torch's threads in each process, whatever this one's environment says
        outcome = _at_once(config, n, steps, warmup, backend, timeout, root, env, stack)
    if daemon is not None:  # stopped by now, after the processes (the stack closes last in, first out), its log read
        if daemon.stop_note:
            record["mps_stop"] = daemon.stop_note
        if "parts" in outcome and daemon.clients < n:
            outcome = {"status": f"failed: {daemon.clients} of the {n} processes reached the MPS daemon "
                                 f"(its control.log); the others ran without MPS"}
    if "parts" not in outcome:
        return record | outcome
    parts = outcome["parts"]
    span = max(p["t_end"] for p in parts) - min(p["t_start"] for p in parts)
    images = sum(p["images"] for p in parts)
    return record | {"status": "ok", "images": images, "images_per_s": images / span,
                     "per_process_images_per_s": [p["images_per_s"] for p in parts],
                     "per_process_threads": [p["threads"] for p in parts],
                     "ms_per_step": sum(p["ms_per_step"] for p in parts) / n, "steps": steps, "warmup": warmup}


def _at_once(config: RecipeConfig, n: int, steps: int, warmup: int, backend: str, timeout: float, root: Path,
             env: dict[str, str], stack: contextlib.ExitStack) -> dict[str, Any]:
    """concurrent()'s processes, killed as `stack` closes if still running, with every process they started
    (compile workers), as in_subprocess() kills its one: {"parts": each one's record}, or {"status": why not}."""
    go = root / "go"
    procs: list[subprocess.Popen] = []
    stack.callback(lambda: [kill_group(p) for p in procs])
    for i in range(n):
        argv = [*_child_argv(config, "fast", steps, warmup, backend), "--json", str(root / f"{i}.json"),
                "--ready-file", str(root / f"ready{i}"), "--go-file", str(go)]
        procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True))
    deadline = time.monotonic() + timeout
    while not all((root / f"ready{i}").exists() for i in range(n)):
        if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    go.touch()
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return {"status": f"timed out after {timeout:.0f} s"}
        if p.returncode != 0:
            errors.append(_failure(subprocess.CompletedProcess(p.args, p.returncode, "", err)))
    if errors:
        return {"status": errors[0]}
    return {"parts": [_read_child(root / f"{i}.json") for i in range(n)]}


# --- the suite ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Planned:
    """One measurement of the suite: a path in one process, or `processes` of them training at once."""
    name: str
    setup: RecipeConfig
    path: str
    processes: int = 0
    mps: bool = False


def suite_plan(config: RecipeConfig, device: torch.device, mps: bool = False) -> list[Planned]:
    """Every measurement of the suite, in the order it runs: what the defaults are decided by first.

    The seed's style and the fast path, eager and compiled in the mode likeliest to pay, answer what
    a final run should use; the processes at once (in the setup given: what a study's trials run), how
    many trials share a GPU; the rest complete the picture, max-autotune (the longest to compile) last.
    """
    eager = config.replace(compile="off")
    cuda = device.type == "cuda"
    first, *other_modes = ("reduce-overhead", "default") if cuda else ("default",)

    def compiled(mode: str) -> Planned:
        return Planned(f"fast, compiled ({mode})", config.replace(compile=mode), "fast")

    def at_once(use_mps: bool) -> list[Planned]:
        return [Planned(f"{n} process{'es' * (n > 1)} at once{' under MPS' if use_mps else ''}", config, "fast", n, use_mps)
                for n in SUITE_CONCURRENCY.get(device.type, SUITE_CONCURRENCY["cpu"]) if not (use_mps and n == 1)]

    return [
        Planned("seed style: classic, fp32, contiguous", eager.replace(amp="off", channels_last="off"), "classic"),
        Planned("fast, eager", eager, "fast"),
        Planned("model step (ceiling)", eager, "model-step"),
        Planned("evaluation", eager, "eval"),
        compiled(first),
        *at_once(False),
        *map(compiled, other_modes),
        *(at_once(True) if mps else []),
        Planned("classic, recipe settings", eager, "classic"),
        *([compiled("max-autotune-no-cudagraphs")] if cuda else []),
    ]


def run_suite(config: RecipeConfig, steps: int, warmup: int, backend: str, timeout: float,
              log: Callable[[str], None], budget: float | None = None) -> list[dict[str, Any]]:
    """The suite's records, in the order measured. With a budget (seconds), no measurement starts after it is
    spent and none runs past it (on a GPU, where each has a process of its own): those are records that say so."""
    device = resolve_device(config)
    deadline = None if budget is None else _clock() + budget
    records = []
    measured: dict[str, dict[str, Any]] = {}  # by what a measurement runs on this device
    for m in suite_plan(config, device, mps=mps_available(device)):
        runs = json.dumps([m.path, m.processes, m.mps, setup_of(m.setup, device)], sort_keys=True)
        if runs in measured:  # e.g. the recipe's settings with --channels-last off on a CPU: again, it would measure noise
            log(f"{m.name}: the same setup as {measured[runs]['name']} on this device")
            records.append(measured[runs] | {"name": m.name, "same_as": measured[runs]["name"]})
            continue
        left = timeout if deadline is None else min(timeout, deadline - _clock())
        if deadline is not None and (left <= 0 or left < MIN_LEFT_S.get(device.type, 0.0)):
            why = "was spent" if left <= 0 else f"had under {MIN_LEFT_S[device.type]:g} s left"
            log(f"{m.name}: skipped, the suite's budget of {budget:g} s {why}")
            records.append({"name": m.name, "path": m.path, **_setup_dict(m.setup),
                            **({"processes": m.processes, "mps": m.mps} if m.processes else {}),
                            "status": f"skipped: the suite's budget of {budget:g} s {why}"})
            continue
        log(f"measuring: {m.name}")
        if m.processes:
            record = concurrent(m.setup, m.processes, steps, warmup, backend, left, mps=m.mps)
        elif device.type == "cuda":
            record = in_subprocess(m.setup, m.path, steps, warmup, backend, left)
        else:
            record = in_this_process(m.setup, m.path, steps, warmup, backend)
        if left < timeout and record["status"].startswith("timed out"):
            record["status"] = f"cut short: the suite's budget of {budget:g} s ran out after {left:.0f} s of it"
        records.append({"name": m.name} | record)
        measured[runs] = records[-1]
    return records


# --- what the figures say ----------------------------------------------------------------------

def conclusions(measurements: list[dict[str, Any]], epochs: int) -> dict[str, Any]:
    """What the measurements decide, from the figures alone: those that failed, ran out of time or were
    skipped decide nothing, and are named (not_measured) after what was decided without them.

    - final_run: each single-process fast-path setup's time for a final run of `epochs` epochs, projected:
      each epoch trains TRAIN_IMAGES at the setup's rate and evaluates TEST_IMAGES at the evaluation's rate;
      a compiled setup adds its compile time once per batch shape (the full batch, and an epoch's last,
      smaller one where the batch size does not divide TRAIN_IMAGES). Start-up and checkpoints are not in
      it (gpu_check's run on the real data has them). The fastest names the compile mode a final run
      should use.
    - vs_seed_style: that fastest setup's training images/s over the seed style's.
    - at_once: processes training at once on the device (Ray's trials sharing it), by images/s in all; where
      two counts or more were measured, the one that trains the most images: how many trials per GPU.
    """
    ok = [r for r in measurements if r.get("status", "ok") == "ok" and "same_as" not in r]
    not_ok = [r for r in measurements if r.get("status", "ok") != "ok"]
    found: dict[str, Any] = {}
    evaluation = next((r for r in ok if r["path"] == "eval"), None)
    if evaluation is not None:
        found["evaluation_s_per_10k"] = evaluation["seconds_per_10k"]
    training = [r for r in ok if r["path"] == "fast" and "processes" not in r]
    if training and evaluation is not None:
        eval_s = evaluation["seconds_per_10k"] * TEST_IMAGES / 10_000
        setups = []
        for r in training:
            shapes = 1 if TRAIN_IMAGES % r["batch_size"] == 0 else 2
            setup = {"name": _name(r), "compile": r["compile"], "images_per_s": r["images_per_s"],
                     "epoch_s": TRAIN_IMAGES / r["images_per_s"] + eval_s, "compiling_s": shapes * r.get("compile_s", 0.0)}
            setups.append(setup | {"seconds": epochs * setup["epoch_s"] + setup["compiling_s"]})
        fastest = min(setups, key=lambda s: s["seconds"])
        found["final_run"] = {"epochs": epochs, "train_images": TRAIN_IMAGES, "test_images": TEST_IMAGES,
                              "setups": setups, "fastest": fastest["name"], "compile": fastest["compile"]}
        seed = next((r for r in ok if _name(r).startswith("seed style")), None)
        if seed is not None:
            found["vs_seed_style"] = fastest["images_per_s"] / seed["images_per_s"]
    at_once = [{"processes": r["processes"], "mps": r["mps"], "images_per_s": r["images_per_s"]}
               for r in ok if "processes" in r]
    if at_once:
        one = next((a["images_per_s"] for a in at_once if a["processes"] == 1 and not a["mps"]), None)
        for a in at_once:
            a["vs_one"] = a["images_per_s"] / one if one else None
        found["at_once"] = {"measured": at_once}
        if len({a["processes"] for a in at_once}) >= 2:
            most = max(at_once, key=lambda a: a["images_per_s"])
            found["at_once"] |= {"most": most["processes"], "mps": most["mps"]}
    if not_ok:
        found["not_measured"] = [{"name": _name(r), "status": r["status"]} for r in not_ok]
    return found


def conclusion_lines(found: dict[str, Any]) -> list[str]:
    lines = []
    if "final_run" in found:
        f = found["final_run"]
        lines.append(f"a {f['epochs']}-epoch final run, projected ({f['train_images']:,} images trained and "
                     f"{f['test_images']:,} evaluated each epoch, compilation once per batch shape; no start-up or "
                     f"checkpoints):")
        for s in f["setups"]:
            mark = "  <- fastest" if s["name"] == f["fastest"] else ""
            compiling = f" + {s['compiling_s']:.0f} s compiling" if s["compiling_s"] else ""
            lines.append(f"  {s['name']:<44}{s['seconds'] / 60:>8.1f} min  ({s['epoch_s']:.2f} s an epoch{compiling}){mark}")
    if "vs_seed_style" in found:
        lines.append(f"the fastest trains {found['vs_seed_style']:.1f}x the images/s of the seed style")
    if "evaluation_s_per_10k" in found:
        lines.append(f"evaluation: {found['evaluation_s_per_10k']:.3f} s per 10,000 images")
    if "at_once" in found:
        a = found["at_once"]
        parts = [f"{m['processes']}{' (MPS)' if m['mps'] else ''}: {m['images_per_s']:.0f}"
                 + (f" ({m['vs_one']:.2f}x)" if m["vs_one"] and (m["processes"] > 1 or m["mps"]) else "")
                 for m in a["measured"]]
        most = f"; the most: {a['most']}{' under MPS' if a['mps'] else ''}" if "most" in a else ""
        lines.append(f"processes training at once, images/s in all: {', '.join(parts)}{most}")
    lines += [f"not measured: {m['name']} ({m['status']})" for m in found.get("not_measured", [])]
    return ["what the figures say:", *lines] if lines else []


# --- report ------------------------------------------------------------------------------------

def _name(r: dict[str, Any]) -> str:
    if "name" in r:
        return r["name"]
    extra = f", compiled ({r['compile']})" if r.get("compile", "off") != "off" else ""
    return f"{r['path']}{extra}"


def table(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"ResNet34, {env['device']}, torch {env['torch']}, python {env['python']}, {env['host_cpus']} CPUs",
             f"{'measurement':<40}{'images/s':>10}{'ms/step':>9}{'vs model step':>15}{'compile s':>11}  setup / status"]
    ceiling = next((r["images_per_s"] for r in report["measurements"]
                    if r["path"] == "model-step" and r.get("status", "ok") == "ok"), None)
    for r in report["measurements"]:
        setup = f"width {r['width']}, batch {r['batch_size']}, amp {r['amp']}, channels_last {r['channels_last']}"
        stop = f"; {r['mps_stop']}" if r.get("mps_stop") else ""
        if r.get("status", "ok") != "ok":
            lines.append(f"{_name(r):<40}{'-':>10}{'-':>9}{'-':>15}{'-':>11}  {r['status']}{stop}")
            continue
        ms = f"{r['ms_per_step']:.1f}" if "ms_per_step" in r else "-"
        vs = f"{r['images_per_s'] / ceiling:.2f}" if ceiling and r["path"] != "eval" else "-"
        comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        note = setup
        if "per_process_images_per_s" in r:
            note += "; per process " + ", ".join(f"{v:.0f}" for v in r["per_process_images_per_s"])
            threads = r["per_process_threads"][0]
            note += f" ({threads} thread{'s' * (threads != 1)} each)"
        if "seconds_per_10k" in r:
            note += f"; {r['seconds_per_10k']:.3f} s per 10,000 images"
        if "same_as" in r:
            note += f"; the same setup as {r['same_as']} here: measured once"
        if r.get("cudagraph_skips"):
            note += f"; CUDA graphs skipped {r['cudagraph_skips']} times (TORCH_LOGS=cudagraphs says why)"
        note += stop
        lines.append(f"{_name(r):<40}{r['images_per_s']:>10.0f}{ms:>9}{vs:>15}{comp:>11}  {note}")
    return "\n".join(lines + conclusion_lines(report.get("conclusions", {})))


def writable(path: Path) -> bool:
    """Whether a file could be created at path: its nearest existing ancestor is a writable directory."""
    if path.is_dir():
        return False
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    return parent.is_dir() and os.access(parent, os.W_OK)


def _wait_for(go_file: str) -> Callable[[], None]:
    def barrier() -> None:
        while not os.path.exists(go_file):
            time.sleep(0.001)
    return barrier


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m recipe.bench", description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser, list(SETUP), title="setup (the recipe's defaults unless given)")
    parser.add_argument("--paths", default="model-step,fast,classic",
                        help=f"comma-separated paths to measure, of {', '.join(PATHS)} (default: model-step,fast,classic)")
    parser.add_argument("--concurrent", type=int, metavar="N",
                        help="N processes training the fast path at once on the device (and under CUDA MPS too, where "
                             "it exists), each on its share of the CPU threads: aggregate and per-process images/s")
    parser.add_argument("--suite", action="store_true",
                        help="every measurement, on a GPU each in its own process (see above)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per path (default: 100 on CUDA, 10 on CPU); evaluation times whole passes "
                             "over its images, as many as hold that many of its batches")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first, which also compile (default: 20 on CUDA, 2 on CPU)")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds each process of --suite (on a GPU) or --concurrent may take (default: 180)")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="--suite only: start no measurement after SECONDS (on a GPU, none with under 15 s of them left), "
                             "and on a GPU let none run past them; "
                             "those left are recorded as skipped (the suite runs the decisive ones first)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile's backend where the setup compiles (default: inductor; the modes apply to it)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    parser.add_argument("--ready-file", help=argparse.SUPPRESS)  # a --concurrent child's handshake
    parser.add_argument("--go-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        config = RecipeConfig.from_dict(given_settings(args, SETUP))
        device = resolve_device(config)
    except RecipeError as e:
        fail(str(e))
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p not in PATHS]
    if unknown or not paths:
        fail(f"--paths {args.paths}: expected a comma-separated list of {', '.join(PATHS)}")
    if args.concurrent is not None and args.concurrent < 1:
        fail(f"--concurrent {args.concurrent}: must be >= 1 (the number of processes training at once)")
    if args.suite and args.concurrent is not None:
        fail("--suite measures several processes at once already; give --suite or --concurrent, not both")
    if args.json and not writable(Path(args.json)):
        fail(f"--json {args.json}: cannot write there")
    cuda = device.type == "cuda"
    steps = args.steps if args.steps is not None else (100 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 2)
    if steps < 1 or warmup < 0:
        fail("--steps must be >= 1 and --warmup >= 0")
    if args.timeout <= 0:
        fail(f"--timeout {args.timeout:g}: must be > 0 seconds")
    if args.budget is not None and (not args.suite or args.budget <= 0):
        fail(f"--budget {args.budget:g}: must be > 0 seconds, and goes with --suite")
    if config.compile != "off" and warmup < 1 and not args.suite:
        fail("--warmup must be >= 1 when the setup compiles (the first steps compile)")

    log = (lambda m: print(m, file=sys.stderr, flush=True)) if (args.suite or args.concurrent) else (lambda m: None)
    if args.suite:
        measurements = run_suite(config, steps, max(warmup, 3), args.compile_backend, args.timeout, log, args.budget)
    elif args.concurrent is not None:
        measurements = [concurrent(config, args.concurrent, steps, warmup, args.compile_backend, args.timeout)]
        if mps_available(device) and args.concurrent > 1:
            measurements.append(concurrent(config, args.concurrent, steps, warmup, args.compile_backend, args.timeout,
                                           mps=True))
    else:
        barrier = _wait_for(args.go_file) if args.go_file else (lambda: None)
        if args.ready_file:
            inner = barrier

            def barrier() -> None:
                Path(args.ready_file).touch()
                inner()
        measurements = [measure(config, p, steps, warmup, compile_backend=args.compile_backend, barrier=barrier)
                        | {"status": "ok"} for p in paths]
    report = {"environment": environment(device), "compile_backend": args.compile_backend, "measurements": measurements,
              "conclusions": conclusions(measurements, config.epochs)}
    if not args.ready_file:
        print(table(report))
        print(json.dumps(report))
    if args.json:
        try:
            write_json(args.json, report)
        except OSError as e:
            fail(f"--json {args.json}: cannot write there ({e.strerror or e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
