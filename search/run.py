"""python -m search.run: a study (Ray Tune + Optuna TPE + ASHA), then the final run, then the report.

    python -m search.run --study default --trials 40 --gpus 4

Results go to results/<study>/: optuna.db (the Optuna study, live), trials.csv,
revalidation.json (the top trials trained again), best.json, final/ (a recipe run directory per
seed, seed-<s>/, the seed recipe's beside them with a baseline, baseline/seed-<s>/, and their summary.json) and
report.html. Ray Tune's own experiments go to
results/<study>/tune/, revalidate-tune/ and final-tune/ (or under --storage). Ctrl-C or SIGTERM
stops the study with its state saved; --resume continues it.
"""
from __future__ import annotations

import argparse
import atexit
import dataclasses
import importlib.metadata
import logging
import math
import os
import re
import shlex
import shutil
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any

from recipe.checkpoint import DiskFullError, human_size, is_disk_full, unwritable_reason
from recipe.cli import Parser, add_config_flags, fail, given_settings
from recipe.config import RecipeError
from recipe.data import check_data, check_sizes
from search import lock, record
from search import study as studies
from search.plan import Plan, check_gpus, is_loopback, local_gpus
from search.stopping import TUNE_SIGINT, Stop
from search.storage import check_uri, is_uri, join, local_path
from search.study import FINISHED, StudyPaths, StudySpec

DATA_FLAGS = ("data", "data_dir", "download")
RESOURCE_FLAGS = ("gpus", "trials_per_gpu", "cpus_per_trial")
SELECTION_FLAGS = ("revalidate_top", "final_seeds", "baseline")
INTERRUPTED = 130
# Ray's switch for single-machine use: with it off, Ray takes 127.0.0.1 as the node's address
# (in Ray's own choice of the node's IP address), so a local study listens on loopback only.
LOCAL_RAY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog="python -m search.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="default", help="a study name in studies/ or a path to a .toml (default: default)")
    parser.add_argument("--trials", type=int, help="number of trials (default: the study's); with --resume, more than "
                                                   "the study had extends it")
    parser.add_argument("--gpus", type=int,
                        help="GPUs to use; 0 runs on CPU only (default: the study's, else every GPU Ray sees)")
    parser.add_argument("--trials-per-gpu", type=int, help="trials sharing one GPU (default: the study's)")
    parser.add_argument("--cpus-per-trial", type=float,
                        help="CPU cores per trial, a fraction allowed (0.5: two trials share a core); its torch threads "
                             "are the whole part, at least 1 (default: the study's)")
    parser.add_argument("--results-dir", default="results", help="where studies' results go (default: results)")
    parser.add_argument("--address", help="join the running Ray cluster at this address (ray start --head prints it)")
    parser.add_argument("--storage", help="where Ray Tune keeps trials and checkpoints: a path every node sees, or a "
                                          "URI Ray accepts such as s3://bucket/prefix, with a store's options in its "
                                          "query (?endpoint_override=HOST:PORT&scheme=http) (default: the results dir)")
    parser.add_argument("--revalidate-top", type=int, metavar="K",
                        help="train the K best complete trials again with another seed and choose by the mean; "
                             "0 chooses by the single best value (default: the study's)")
    parser.add_argument("--final-seeds", type=int, metavar="N",
                        help="final runs, one per seed, side by side (default: the study's, else 3 on GPUs, 1 on CPU)")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction,
                        help="train the seed recipe's settings (trial 0's) as final runs too, on the same seeds, to "
                             "compare with the chosen settings (default: the study's [final] baseline)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study where it stopped")
    parser.add_argument("--no-final", action="store_true", help="stop after the search: no final run")
    add_config_flags(parser, DATA_FLAGS, title="data (passed to every run of the study)")
    return parser.parse_args(argv)


MINIMUMS = {"trials": 1, "gpus": 0, "trials_per_gpu": 1, "revalidate_top": 0, "final_seeds": 1}


def absolute_data_paths(settings: dict[str, Any]) -> dict[str, Any]:
    """Runs start in Tune's working directories: data paths are taken relative to where the user is."""
    out = dict(settings)
    if "data_dir" in out:
        out["data_dir"] = str(Path(out["data_dir"]).resolve())
    if str(out.get("data", "")).endswith(".npz"):
        out["data"] = str(Path(out["data"]).resolve())
    return out


def with_overrides(spec: StudySpec, args: argparse.Namespace) -> StudySpec:
    resources = {k: getattr(args, k) for k in RESOURCE_FLAGS if getattr(args, k) is not None}
    recipe = absolute_data_paths({"data_dir": "data", **spec.recipe, **given_settings(args, DATA_FLAGS)})
    changes: dict[str, Any] = {"recipe": recipe, "trial": absolute_data_paths(spec.trial),
                               "final": absolute_data_paths(spec.final)}
    if args.trials is not None:
        changes["trials"] = args.trials
    if resources:
        changes["resources"] = dataclasses.replace(spec.resources, **resources)
    selection = {k: getattr(args, k) for k in SELECTION_FLAGS if getattr(args, k) is not None}
    if selection:
        changes["selection"] = dataclasses.replace(spec.selection, **selection)
    return spec.replace(**changes)


STATES = {
    "finished": "has finished; its report is {report}",
    "no_best": "has finished its search, but no trial ran the whole horizon; its report is {report}",
    "searched": "has finished its search but not its final run; add --resume to run it",
    "interrupted": "was interrupted; add --resume to continue it",
}


def study_state(paths: StudyPaths) -> str:
    """'new', 'interrupted' (in its search or re-validation), 'no_best', 'searched' (final runs to do) or 'finished'."""
    if not paths.spec.exists():
        return "new"
    if not paths.trials_csv.exists():  # written when the search ends
        return "interrupted"
    states = record.trial_states(paths)  # a damaged trials.csv is rebuilt, whatever the state
    if not paths.best.exists():  # written once re-validation has chosen: none before, or no complete trial
        return "interrupted" if "complete" in states else "no_best"
    summary = record.load_final_summary(paths)  # written when every final run has ended
    return "finished" if summary is not None and summary["status"] in FINISHED else "searched"


def check_runs(spec: StudySpec) -> None:
    """Every kind of run the study starts, built as it will be and checked against its data now, before Ray.

    A setting that cannot work with the data (an eval_subset above the test set's size, say) is one line here,
    not a run that fails with its retries once the search has spent its hours.
    """
    params = spec.seed_params()
    # The re-validation runs are the trials' config with another seed, which nothing checked here reads.
    runs = (("the trials", spec.trial_config(params)), ("the final runs", spec.final_config(params)))
    sizes: dict[tuple[str, str], tuple[int, int]] = {}  # each data source loaded once
    for what, config in runs:
        source = (config.data, config.data_dir)
        try:
            if source in sizes:
                check_sizes(config, *sizes[source])
            else:
                sizes[source] = check_data(config)
        except RecipeError as e:
            raise RecipeError(f"{what}: {e}") from None


def edited_keys(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The study file's keys whose values differ between two of its specs (StudySpec.to_dict): then and now."""
    def flat(value: Any, prefix: str) -> dict[str, Any]:
        if isinstance(value, dict):
            return {k: v for key, sub in value.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): value}

    a, b = flat(then, ""), flat(now, "")
    for rule in ("selection.seeds_per_gpu",):  # the study's, not its file's: no edit of the file
        a.pop(rule, None), b.pop(rule, None)
    toml_names = {"metric": "objective.metric", "selection.final_seeds": "final.seeds",
                  "selection.baseline": "final.baseline"}
    return sorted(toml_names.get(k, k) for k in set(a) | set(b) if a.get(k, None) != b.get(k, None))


def extended(paths: StudyPaths, spec: StudySpec, trials: int) -> StudySpec:
    """The study resumed with `trials` in all (--resume --trials N): more are sampled with the same TPE history.

    Fewer than the trials the study holds is bad input: nothing that ended is undone, and a trial stopped midway
    goes on (the study would end with more trials than asked for).
    """
    held, ended = 0, 0
    if paths.optuna_db.is_file():
        from search.results import open_study  # imports Optuna and pandas, here only

        every = open_study(paths, spec).get_trials(deepcopy=False)
        held, ended = len(every), sum(t.state.is_finished() for t in every)
    if trials < held:
        raise RecipeError(f"--trials {trials}: study {spec.name!r} holds {held} trials ({ended} ended, the others go on "
                          f"when it resumes); a resumed study can run more trials, not fewer: ask for at least {held}")
    return spec.replace(trials=trials)


def check_writable(flag: str, given: str, path: Path) -> None:
    """A directory the study will write: a file in the way, no permission or a read-only file system is bad input."""
    reason = unwritable_reason(path)
    if reason:
        raise RecipeError(f"{flag} {given}: cannot write there ({reason}); choose another {flag}")


def plan(args: argparse.Namespace) -> Plan:
    """Everything decided before Ray starts; bad input raises RecipeError and nothing is written (a damaged file that
    is derived from others is rebuilt: search.record)."""
    for name, low in MINIMUMS.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise RecipeError(f"--{name.replace('_', '-')}: must be >= {low}, got {value}")
    if args.cpus_per_trial is not None and not (math.isfinite(args.cpus_per_trial) and args.cpus_per_trial > 0):
        raise RecipeError(f"--cpus-per-trial: must be > 0, got {args.cpus_per_trial:g}")
    spec = studies.load(args.study, new=False)  # a study saved before a rule of new studies still resumes
    paths = StudyPaths.of(args.results_dir, spec.name)
    if not paths.spec.exists():  # a new study: every rule of a study file
        spec = studies.load(args.study)
    check_writable("--results-dir", args.results_dir, paths.root)
    if args.storage and (path := local_path(args.storage)):  # file://...: a local path, kept as one (written whole)
        args.storage = path
    if args.storage and not is_uri(args.storage):
        check_writable("--storage", args.storage, Path(args.storage).resolve() / spec.name)
    lock.check_free(paths.root, spec.name)  # before the state: a running study looks interrupted
    state = study_state(paths)
    resume = args.resume
    if state == "new" and resume:
        raise RecipeError(f"{paths.root}: nothing to resume (no study {spec.name!r} there)")
    if state != "new" and not resume:
        what = STATES[state].format(report=paths.report)
        if sys.stdin.isatty() and state in ("interrupted", "searched"):
            answer = input(f"Study {spec.name!r} in {paths.root} {what.split(';')[0]}. Resume it? [Y/n] ")
            if answer.strip().lower() not in ("", "y", "yes"):
                raise RecipeError(f"{paths.root}: not resumed; remove it, or pass another --results-dir, to start over")
            resume = True
        else:
            raise RecipeError(f"{paths.root}: study {spec.name!r} {what}, or remove the directory to start over")
    if resume:
        # Its record was made with them (the trials' resources and data, the re-runs' seed, the final runs'); only
        # --trials may grow it.
        changed = [f for f in (*RESOURCE_FLAGS, *SELECTION_FLAGS, *DATA_FLAGS) if getattr(args, f) is not None]
        if changed:
            raise RecipeError(f"--{changed[0].replace('_', '-')}: a resumed study keeps the settings it started with "
                              f"({paths.spec}); resume without it")
        file_spec, spec = spec, paths.load_spec()
        if args.trials is not None:
            spec = extended(paths, spec, args.trials)
        record.read_revalidation(paths)  # damaged, it is one line now, not a crash once the search is done
        then = record.study_file_then(paths)  # the study file's own settings at the start, flags apart
        edited = [] if then is None else edited_keys(then, file_spec.to_dict())  # none saved: nothing to compare
    else:
        file_spec, spec, edited = spec, with_overrides(spec, args), []
    # Missing or malformed data, or settings the data cannot serve, are one line now, not a crash in every run later.
    check_runs(spec)
    if args.address is None:  # a Ray of the driver's own, given this machine's GPUs (tuning.start_ray)
        check_gpus(spec.resources.gpus, local_gpus(), "this machine")
    if args.address and not is_loopback(args.address) and not args.storage:
        raise RecipeError("--address: a study on a cluster needs --storage, a path every node sees or a URI "
                          "(s3://...): trials may run on any node")
    storage = str(paths.root.parent)
    if args.storage:
        storage = join(args.storage) if is_uri(args.storage) else str(Path(args.storage).resolve())
    storage = join(storage, spec.name)
    if args.storage and is_uri(args.storage):
        check_uri(args.storage, storage)  # last: it asks the store over the network, and writes (and deletes) a probe
    if edited:  # said once nothing else stops the study
        print(f"note: {studies.resolve_path(args.study)} was edited since the study started, in {', '.join(edited)}; "
              f"a resumed study keeps the settings it started with: the saved {paths.spec} wins", file=sys.stderr)
    return Plan(spec=spec, paths=paths, resume=resume, storage=storage, address=args.address,
                final=not args.no_final, state=state, study_file=file_spec.to_dict())


def hold_lock(p: Plan) -> None:
    """Take the study's lock for the driver's life (the kernel drops it when the driver dies)."""
    created = [d for d in (p.paths.root, *p.paths.root.parents) if not d.exists()]  # removed again if left empty
    lock.take(p.paths.root, p.spec.name)
    if study_state(p.paths) != p.state:  # another driver ran it between plan() and now
        raise RecipeError(f"{p.paths.root}: study {p.spec.name!r} changed while this driver started; run the command again")
    if created:
        atexit.register(forget_if_empty, p.paths.root, created)


def forget_if_empty(root: Path, created: list[Path]) -> None:
    """A new study that stopped before writing anything (a bad --gpus, say) leaves no directory behind."""
    if root.is_dir() and [f.name for f in root.iterdir()] == [lock.LOCK_FILE]:
        lock.lock_path(root).unlink()
        for d in created:  # the study's directory, then the results directory if this driver made it
            if any(d.iterdir()):
                break
            d.rmdir()


DISTRIBUTION = "cifar100-hpo"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"  # there in a checkout (an editable install)
ENGINES = ("ray", "optuna")  # what the driver imports; below their floors it would stop in an ImportError, or worse


def release(version: str) -> tuple[int, ...]:
    """A version's release numbers: '2.45.0rc1' -> (2, 45, 0) (a pre-release counts as its release)."""
    return tuple(int(n) for n in re.match(r"\d+(?:\.\d+)*", version).group().split("."))


def declared_requirements() -> list[str]:
    """The project's dependencies as pyproject.toml declares them, the one place they are written.

    Read from the file in a checkout (an editable install's metadata is a copy as old as its install),
    else from the installed project's metadata; none for a project neither checked out nor installed.
    """
    if PYPROJECT.is_file():
        return tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    try:
        return importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return []


def declared_floors() -> dict[str, str]:
    """Each dependency's floor (its `>=`) by name; CI's floor environment pins the same (.ci/floor-constraints.txt)."""
    floors = {}
    for requirement in declared_requirements():
        found = re.match(r"([A-Za-z0-9._-]+)\s*(?:\[[^]]*\])?\s*>=\s*([0-9][^,;\s]*)", requirement)
        if found and ";" not in requirement:  # an extra's (dev) or a platform's requirement is not the driver's
            floors[found[1].lower().replace("_", "-")] = found[2]
    return floors


def check_engines(names: tuple[str, ...] = ENGINES) -> None:
    """One line (RecipeError) where Ray or Optuna is missing or older than this project's floor, before either is imported.

    pip keeps them at or above their floors, but an environment installed with --no-deps, or by conda, may not;
    a driver must also run its cluster's Ray, so a user picks that Ray and may pick one too old.
    """
    floors = declared_floors()
    for name in names:
        if name not in floors:
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise RecipeError(f"{name} is not installed; this project needs {name}>={floors[name]}") from None
        if release(installed) < release(floors[name]):
            cluster = " that your cluster runs too" if name == "ray" else ""
            raise RecipeError(f"{name} {installed} is installed, older than this project's floor: install "
                              f"{name}>={floors[name]}{cluster}")


def main(argv: list[str] | None = None) -> int:
    stop = Stop()
    with stop.installed():  # Ctrl-C and SIGTERM alike, from the first moment to the last
        return drive(argv, stop)


def drive(argv: list[str] | None, stop: Stop) -> int:
    """The study as the command line asks; every stop ends in one line: exit status 130 and what to run next."""
    args = parse_args(argv)
    p: Plan | None = None
    try:
        check_engines()
        p = plan(args)
        hold_lock(p)
        if p.on_loopback:
            os.environ[LOCAL_RAY] = "0"  # read when ray is first imported, below
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: none of Tune's tables; live.py reports
        os.environ[TUNE_SIGINT] = "1"  # the driver handles SIGINT itself (search.stopping), read by each tuner.fit
        warnings.filterwarnings("ignore", module=r"(ray|optuna)(\..*)?$")
        logging.getLogger("ray").setLevel(logging.ERROR)
        from search import tuning  # imports ray and optuna

        tuning.optuna.logging.set_verbosity(logging.WARNING)
        return tuning.run(p, stop)
    except RecipeError as e:
        fail(str(e))
    except KeyboardInterrupt:
        print(f"\ninterrupted; {after_interrupt(args, argv, p)}", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:
        if p is None or not is_disk_full(e):
            raise
        # The study's own files (trials.csv, best.json, report.html, optuna.db) could not be written;
        # each is written whole or not at all, so what was there before is as it was.
        print(f"error: the study stopped: {disk_full_message(e, p)}; free space, then continue with: "
              f"{resume_command(args)}", file=sys.stderr)
        return 1


def after_interrupt(args: argparse.Namespace, argv: list[str] | None, p: Plan | None) -> str:
    """What to run after a stop, from what the study had written by then: a command that works when pasted."""
    state = "new" if p is None else study_state(p.paths)
    if state == "new":  # nothing written (a directory the driver made, holding only its lock, goes at exit)
        again = shlex.join(["python", "-m", "search.run", *(sys.argv[1:] if argv is None else argv)])
        return f"nothing of the study was written; run the same command again: {again}"
    if state == "finished":
        report = ["python", "-m", "search.report", "--study", p.spec.name]
        if args.results_dir != "results":
            report += ["--results-dir", args.results_dir]
        return f"the study had finished; its report is {p.paths.report} (rewrite it with: {shlex.join(report)})"
    return f"continue with: {resume_command(args)}"


def disk_full_message(error: BaseException, p: Plan) -> str:
    """What could not be written, and the free space there, from a disk-full error of any layer."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DiskFullError):
            return str(seen)
        if isinstance(seen, OSError) and seen.filename:
            where = Path(seen.filename)
            free = shutil.disk_usage(where.parent if where.parent.exists() else p.paths.root).free
            return f"{where}: {seen.strerror.lower()} ({human_size(free)} free there)"
        seen = seen.__cause__ or seen.__context__
    # sqlite (Optuna's storage) says "database or disk is full" and names no file.
    return f"{p.paths.optuna_db}: database or disk is full ({human_size(shutil.disk_usage(p.paths.root).free)} free there)"


def resume_command(args: argparse.Namespace) -> str:
    """The command that continues the study, as it can be pasted into a shell (paths with spaces quoted)."""
    words = ["python", "-m", "search.run", "--study", args.study]
    if args.results_dir != "results":
        words += ["--results-dir", args.results_dir]
    for name in ("storage", "address"):
        if getattr(args, name):
            words += [f"--{name}", getattr(args, name)]
    return shlex.join([*words, "--resume"])


if __name__ == "__main__":
    sys.exit(main())
