"""StudySpec: a study as studies/<name>.toml defines it, validated; and where its results live.

A study file (read with the standard library's tomllib) has these tables; every key is
optional except the search space:

    name = "default"              # its results directory, results/<name>/ (default: the file's name without
                                  # .toml): 1 to 100 of A-Z a-z 0-9 - _ . and not starting with "." or "-"
    seed = 0                      # seeds the sampler, and every trial's recipe (0 to 2**32 - 1)
    trials = 40                   # how many trials the search runs

    [objective]                   # what a trial is scored on, on its validation split
    metric = "eval_acc"           # "eval_acc" (maximised) or "eval_loss" (minimised)

    [space.lr]                    # one table per searched setting: lr, weight_decay,
    low = 0.02                    # dropout and label_smoothing, each with its range
    high = 0.4                    # and whether it is searched on a log scale
    log = true

    [sampler]                     # Optuna's TPE
    n_startup_trials = 10         # random trials before TPE models the results
    multivariate = true
    constant_liar = true          # keeps parallel trials from piling onto one point

    [asha]                        # early stopping on the epoch counter
    horizon = 50                  # epochs of a trial: its whole OneCycle schedule
    grace_period = 5              # epochs before the first rung
    reduction_factor = 3          # keep the best 1/3 at each rung

    [resources]
    gpus = 1                      # GPUs to use (0: CPU only; omitted: all Ray sees)
    trials_per_gpu = 4            # trials sharing one GPU
    cpus_per_trial = 2
    max_failures = 2              # retries of a crashed trial from its last checkpoint

    [selection]                   # how the search's answer is chosen
    revalidate_top = 3            # train the K best complete trials again at the horizon with
                                  # another seed; the best mean over the runs wins (0: the best
                                  # single value wins, as Optuna reports it)

    [recipe]                      # recipe settings for every run of the study
    [trial]                       # recipe settings for the trials only (val_size > 0)
    [final]                       # recipe settings for the final run only, and
    seeds = 3                     # final runs, one per seed, side by side (omitted: 3 on GPUs, 1 on CPU)
    baseline = true               # train the seed recipe's settings (trial 0's) beside them, on the same
                                  # seeds: the study ends with "chosen vs seed recipe" (omitted: false)

Every run of a study (trials, re-validation runs, final runs) scores on the same images: the
validation split and the test subset are drawn with the study's seed (split_seed); a re-run
or an extra final run changes only the seed of initialisation, order and augmentation.

load() checks a file whole, each failure a SpecError of one line naming the file and the key: its tables
and types, its name, its seed, and each range at both ends against RecipeConfig's own validation (a trial
may sample either end). search.run then checks every kind of run against its data (run.check_runs). The
name's and the ranges' rules are a new study's: a study saved before them still resumes (load(new=False)).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipe.config import SEARCHED, RecipeConfig, RecipeError
METRICS = {"eval_acc": "max", "eval_loss": "min"}
STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
FINISHED = ("completed", "diverged")  # final runs that ended for good; any other status is run again on --resume
# A study's name is its results directory's name (and its Optuna study's, and Tune's directory's on --storage):
# a plain file name, so that nothing of the study is written outside --results-dir.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")  # no leading "-": a name is also a command-line argument
NAME_MAX = 100
# spec.json's key for the study file's own settings when the study started, before the command line's changes
# (search.plan.Plan.spec_record); a study saved before has none.
STUDY_FILE = "study_file"
# The largest study seed: Optuna's samplers (and the report's fANOVA) seed numpy's RandomState, which takes 32 bits.
MAX_STUDY_SEED = 2**32 - 1


class SpecError(RecipeError):
    """A study file is missing or wrong; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Sampler:
    n_startup_trials: int = 10
    multivariate: bool = True
    constant_liar: bool = True


@dataclass(frozen=True)
class Asha:
    horizon: int = 50
    grace_period: int = 5
    reduction_factor: int = 3


@dataclass(frozen=True)
class Resources:
    gpus: int | None = None
    trials_per_gpu: int = 4
    cpus_per_trial: float = 2  # as Ray's num_cpus: 0.5 lets two trials share a core; threads: its whole part, >= 1
    max_failures: int = 2


@dataclass(frozen=True)
class Selection:
    revalidate_top: int = 3
    final_seeds: int | None = None  # [final] seeds in a study file; None: 3 on GPUs, 1 on CPU
    baseline: bool = False  # [final] baseline in a study file: the seed recipe trained beside the chosen settings
    # A study started before the final stage had a baseline: its unset final_seeds meant a seed per GPU, up to 3.
    seeds_per_gpu: bool = False

    def seeds_for(self, gpus: int) -> int:
        """Final runs to train per settings: 3 on any number of GPUs (they share one where they must), 1 on CPU; a
        study started before that rule keeps its own (min(3, gpus)): resumed, it trains the runs it planned."""
        if self.final_seeds is not None:
            return self.final_seeds
        if not gpus:
            return 1
        return min(3, gpus) if self.seeds_per_gpu else 3


# What a study saved before [selection] existed ran neither re-validation nor several final seeds (nor a baseline:
# a study saved before `baseline` existed takes its default, False).
SELECTION_BEFORE = {"revalidate_top": 0, "final_seeds": 1}


def saved_selection(selection: dict[str, Any]) -> dict[str, Any]:
    """A saved spec's [selection]; one saved before `baseline` existed planned a final seed per GPU, up to 3."""
    if "baseline" not in selection:
        return {**selection, "seeds_per_gpu": True}
    return selection


@dataclass(frozen=True)
class StudySpec:
    name: str
    space: dict[str, Param]
    seed: int = 0
    trials: int = 40
    metric: str = "eval_acc"
    sampler: Sampler = field(default_factory=Sampler)
    asha: Asha = field(default_factory=Asha)
    resources: Resources = field(default_factory=Resources)
    selection: Selection = field(default_factory=Selection)
    recipe: dict[str, Any] = field(default_factory=dict)
    trial: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    def seed_params(self) -> dict[str, float]:
        """The searched settings of the recipe this study wraps: its trial 0."""
        base = RecipeConfig.from_dict(self.recipe)
        return {name: getattr(base, name) for name in SEARCHED}

    def trial_config(self, params: dict[str, float], seed: int | None = None) -> RecipeConfig:
        """A trial's recipe: the study's settings, the sampled ones, the horizon as its length.

        `seed` (a re-validation run's) changes initialisation, order and augmentation, never the split.
        """
        return RecipeConfig.from_dict({"seed": self.seed, **self.recipe, **self.trial, **params,
                                       "epochs": self.asha.horizon, **self._seeds(seed)})

    def final_config(self, params: dict[str, float], seed: int | None = None) -> RecipeConfig:
        """The final run's recipe: the whole training set, evaluated on the test set."""
        return RecipeConfig.from_dict({"seed": self.seed, **self.recipe, **self.final, **params, **self._seeds(seed)})

    def _seeds(self, seed: int | None) -> dict[str, int]:
        return {"seed": self.seed if seed is None else seed, "split_seed": self.seed}

    def final_seeds(self, gpus: int) -> list[int]:
        """The seeds of the final runs: the study's seed, then the next ones."""
        return [self.seed + i for i in range(self.selection.seeds_for(gpus))]

    def revalidation_seed(self) -> int:
        """The seed of every re-validation run: one seed for all, so that the re-runs differ only in their settings."""
        return self.seed + 1

    def trial_threads(self) -> int:
        """A trial's torch threads: the whole part of its CPUs, at least one (as Ray sets OMP_NUM_THREADS)."""
        return max(1, int(self.resources.cpus_per_trial))

    def rungs(self) -> list[int]:
        """The epochs at which ASHA compares trials (before the horizon)."""
        out, r = [], self.asha.grace_period
        while r < self.asha.horizon:
            out.append(r)
            r *= self.asha.reduction_factor
        return out

    def replace(self, **changes: Any) -> "StudySpec":
        spec = dataclasses.replace(self, **changes)
        validate(spec, "command line")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "spec") -> "StudySpec":
        try:
            spec = cls(
                name=d["name"], seed=d["seed"], trials=d["trials"], metric=d["metric"],
                space={k: Param(**v) for k, v in d["space"].items()},
                sampler=Sampler(**d["sampler"]), asha=Asha(**d["asha"]), resources=Resources(**d["resources"]),
                selection=Selection(**saved_selection(d.get("selection", SELECTION_BEFORE))),
                recipe=d["recipe"], trial=d["trial"], final=d["final"],
            )
            validate(spec, where)  # its rules read the values: a wrong type is a TypeError there, say
        except SpecError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SpecError(f"{where}: not a saved study spec ({type(e).__name__}: {e})") from None
        return spec


def _typed(where: str, key: str, value: Any, kind: type, minimum: float | None = None) -> Any:
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise SpecError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
    if minimum is not None and value < minimum:
        raise SpecError(f"{where}: {key} must be >= {minimum}, got {value!r}")
    return value


def _table(where: str, name: str, data: dict[str, Any], cls: type, exclude: tuple[str, ...] = ()) -> Any:
    """A dataclass from a TOML table, with unknown keys and wrong types as errors."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: [{name}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in exclude}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"{where}: [{name}] has unknown key {unknown[0]!r} (known: {', '.join(fields)})")
    required = [f.name for f in fields.values()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [key for key in required if key not in data]
    if missing:
        raise SpecError(f"{where}: [{name}] needs {' and '.join(required)}; it has no {missing[0]}")
    values = {}
    for key, value in data.items():
        kind = {"int": int, "bool": bool, "float": float, "int | None": int}[fields[key].type]
        values[key] = _typed(where, f"{name}.{key}", value, kind, minimum=0 if kind is int else None)
    return cls(**values)


def check_name(where: str, name: str, from_file_name: bool) -> None:
    """A study's name is a plain file name: letters, digits, '-', '_' and '.', no leading '.' or '-', at most
    NAME_MAX."""
    if not (len(name) <= NAME_MAX and NAME.fullmatch(name)):
        source = " (the file's name, as the study sets no name)" if from_file_name else ""
        raise SpecError(f"{where}: name{source} must be 1 to {NAME_MAX} of the letters A-Z a-z, digits, '-', '_' "
                        f"and '.', not starting with '.' or '-' (it names the study's results directory); got {name!r}")


def names_one_directory(name: Any) -> bool:
    """The rule every study's name keeps, saved before check_name's or not: it names one directory inside
    --results-dir."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def check_directory_name(where: str, name: Any) -> None:
    if not names_one_directory(name):
        raise SpecError(f"{where}: name must name one directory inside the results directory (not empty, '.' or "
                        f"'..', no '/'); got {name!r}")


def validate(spec: StudySpec, where: str) -> None:
    """Every rule a study must keep, each failure one line naming the key."""
    check_directory_name(where, spec.name)
    if set(spec.space) != set(SEARCHED):
        missing, extra = sorted(set(SEARCHED) - set(spec.space)), sorted(set(spec.space) - set(SEARCHED))
        what = f"missing [space.{missing[0]}]" if missing else f"unknown [space.{extra[0]}]"
        raise SpecError(f"{where}: {what}; the space searches exactly {', '.join(SEARCHED)}")
    for name, p in spec.space.items():
        if not (math.isfinite(p.low) and math.isfinite(p.high)) or p.low >= p.high:
            raise SpecError(f"{where}: space.{name}: low must be below high, got low={p.low!r}, high={p.high!r}")
        if p.log and p.low <= 0:
            raise SpecError(f"{where}: space.{name}: a log scale needs low > 0, got {p.low!r}")
    if spec.metric not in METRICS:
        raise SpecError(f"{where}: objective.metric must be one of {', '.join(METRICS)}, got {spec.metric!r}")
    for key, value, low in (("trials", spec.trials, 1), ("seed", spec.seed, 0), ("asha.horizon", spec.asha.horizon, 1),
                            ("asha.grace_period", spec.asha.grace_period, 1),
                            ("asha.reduction_factor", spec.asha.reduction_factor, 2),
                            ("sampler.n_startup_trials", spec.sampler.n_startup_trials, 0),
                            ("resources.trials_per_gpu", spec.resources.trials_per_gpu, 1),
                            ("resources.max_failures", spec.resources.max_failures, 0),
                            ("selection.revalidate_top", spec.selection.revalidate_top, 0)):
        if value < low:
            raise SpecError(f"{where}: {key} must be >= {low}, got {value!r}")
    if spec.seed > MAX_STUDY_SEED:
        raise SpecError(f"{where}: seed must be <= {MAX_STUDY_SEED} (Optuna's sampler takes a 32-bit seed), "
                        f"got {spec.seed!r}")
    if not (math.isfinite(spec.resources.cpus_per_trial) and spec.resources.cpus_per_trial > 0):
        raise SpecError(f"{where}: resources.cpus_per_trial must be > 0, got {spec.resources.cpus_per_trial!r}")
    if spec.resources.gpus is not None and spec.resources.gpus < 0:
        raise SpecError(f"{where}: resources.gpus must be >= 0, got {spec.resources.gpus!r}")
    if spec.selection.final_seeds is not None and spec.selection.final_seeds < 1:
        raise SpecError(f"{where}: final.seeds must be >= 1, got {spec.selection.final_seeds!r}")
    if spec.asha.grace_period > spec.asha.horizon:
        raise SpecError(f"{where}: asha.grace_period ({spec.asha.grace_period}) must not exceed "
                        f"asha.horizon ({spec.asha.horizon})")
    for table in ("recipe", "trial", "final"):
        overrides = getattr(spec, table)
        searched = sorted(set(overrides) & set(SEARCHED))
        if searched:
            raise SpecError(f"{where}: [{table}] sets {searched[0]}, which the search chooses; "
                            f"set its range in [space.{searched[0]}]")
        if "epochs" in overrides and table != "final":
            raise SpecError(f"{where}: [{table}] sets epochs; a trial's length is asha.horizon")
        try:
            RecipeConfig.from_dict({**spec.recipe, **overrides})
        except RecipeError as e:
            raise SpecError(f"{where}: [{table}] {e}") from None
    seed = spec.seed_params()
    if spec.trial_config(seed).val_size == 0:
        raise SpecError(f"{where}: [trial] val_size must be > 0: trials score on a validation split, never on the test set")
    if spec.final_config(seed).val_size != 0:
        raise SpecError(f"{where}: [final] val_size must be 0: the final run trains on the whole training set")
    for name, value in seed.items():
        p = spec.space[name]
        if not p.low <= value <= p.high:
            raise SpecError(f"{where}: space.{name}: [{p.low}, {p.high}] must contain the seed recipe's {value}, "
                            f"which is the study's first trial")


def check_ranges(spec: StudySpec, where: str) -> None:
    """Each range at both ends against RecipeConfig's own validation: a trial may sample either end.

    A study file's rule, not a saved spec's: a study saved before it still resumes and is reported.
    """
    for name, p in spec.space.items():
        for end, value in (("low", p.low), ("high", p.high)):
            try:
                RecipeConfig.from_dict({name: value})
            except RecipeError as e:
                raise SpecError(f"{where}: space.{name}: {end} = {value!r} is not a value the recipe takes ({e})") from None


def resolve_path(study: str) -> Path:
    """A study name in studies/ or a path to a .toml file."""
    path = Path(study)
    if path.suffix == ".toml" or "/" in study:
        return path
    return STUDIES_DIR / f"{study}.toml"


def load(study: str, new: bool = True) -> StudySpec:
    """The study file `study` (a name in studies/ or a path), checked whole; a SpecError names what is wrong.

    new=False reads the file of a study that has started (to find its results and see whether the file was edited
    since): the rules a study saved before them need not keep, its name a plain file name (check_name) and its
    ranges values the recipe takes (check_ranges), are left out; its saved spec.json is what runs.
    """
    path = resolve_path(study)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in STUDIES_DIR.glob("*.toml")))
        raise SpecError(f"{path}: no such study file (studies: {known}; or give a path to a .toml file)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not a UTF-8 text file (byte {e.start} is {e.object[e.start]:#04x}); a TOML file "
                        f"is UTF-8") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML ({e})") from None
    where = str(path)
    allowed = {"name", "seed", "trials", "objective", "space", "sampler", "asha", "resources", "selection", "recipe",
               "trial", "final"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    objective = data.get("objective", {})
    if not isinstance(objective, dict) or set(objective) - {"metric", "mode"}:
        raise SpecError(f"{where}: [objective] takes metric (and mode, which must match it)")
    metric = objective.get("metric", "eval_acc")
    if not isinstance(metric, str) or metric not in METRICS:
        raise SpecError(f"{where}: objective.metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if "mode" in objective and METRICS.get(metric) != objective["mode"]:
        raise SpecError(f"{where}: objective.mode for {metric} must be {METRICS.get(metric)!r}, got {objective['mode']!r}")
    space_data = data.get("space", {})
    if not isinstance(space_data, dict):
        raise SpecError(f"{where}: [space] must hold one table per searched setting")
    space = {name: _table(where, f"space.{name}", table, Param) for name, table in space_data.items()}
    for name in ("recipe", "trial", "final"):
        if not isinstance(data.get(name, {}), dict):
            raise SpecError(f"{where}: [{name}] must be a table of recipe settings")
    for name in ("recipe", "trial", "final"):
        seeded = sorted(set(data.get(name, {})) & {"seed", "split_seed"})
        if seeded:
            raise SpecError(f"{where}: [{name}] sets {seeded[0]}; every run of a study is seeded by the study's "
                            f"top-level seed (re-runs and further final runs take the next seeds)")
    final = dict(data.get("final", {}))
    selection = _table(where, "selection", data.get("selection", {}), Selection,
                       exclude=("final_seeds", "baseline", "seeds_per_gpu"))
    if "seeds" in final:  # the number of final runs: a key of [final] beside its recipe settings
        selection = dataclasses.replace(selection, final_seeds=_typed(where, "final.seeds", final.pop("seeds"), int, 1))
    if "baseline" in final:  # likewise: whether the seed recipe is trained beside the chosen settings
        selection = dataclasses.replace(selection, baseline=_typed(where, "final.baseline", final.pop("baseline"), bool))
    name = _typed(where, "name", data.get("name", path.stem), str)
    if new or not names_one_directory(name):  # a name no study may have is told the rule of a new one
        check_name(where, name, from_file_name="name" not in data)
    spec = StudySpec(
        name=name,
        space=space,
        seed=_typed(where, "seed", data.get("seed", 0), int, 0),
        trials=_typed(where, "trials", data.get("trials", 40), int, 1),
        metric=metric,
        sampler=_table(where, "sampler", data.get("sampler", {}), Sampler),
        asha=_table(where, "asha", data.get("asha", {}), Asha),
        resources=_table(where, "resources", data.get("resources", {}), Resources),
        selection=selection,
        recipe=data.get("recipe", {}),
        trial=data.get("trial", {}),
        final=final,
    )
    validate(spec, where)
    if new:
        check_ranges(spec, where)
    return spec


BASELINE = "baseline"  # final/baseline/seed-<s>/: the seed recipe's final runs, beside the chosen settings' final/seed-<s>/


def final_run_name(seed: int, baseline: bool = False) -> str:
    """A final run's directory relative to final/, and its name in the study's record: seed-<s> or baseline/seed-<s>."""
    return f"{BASELINE}/seed-{seed}" if baseline else f"seed-{seed}"


@dataclass(frozen=True)
class StudyPaths:
    """The results layout of one study: results/<study>/..."""

    root: Path

    @classmethod
    def of(cls, results_dir: str | Path, name: str) -> "StudyPaths":
        return cls(Path(results_dir).resolve() / name)

    @property
    def spec(self) -> Path:  # the spec the study runs with, CLI overrides applied (JSON)
        return self.root / "spec.json"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{self.optuna_db}"

    @property
    def best(self) -> Path:
        return self.root / "best.json"

    @property
    def trials_csv(self) -> Path:
        return self.root / "trials.csv"

    @property
    def final(self) -> Path:  # the final runs (seed-<s>/) and their aggregate (summary.json)
        return self.root / "final"

    @property
    def revalidation(self) -> Path:  # the re-validation runs of the top trials and the choice they made
        return self.root / "revalidation.json"

    def final_run(self, seed: int, baseline: bool = False) -> Path:  # one final run: a recipe run directory
        return self.final / final_run_name(seed, baseline)

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def load_spec(self) -> StudySpec:
        """The study as it ran; a damaged spec.json, which nothing else holds, is a SpecError saying what to do."""
        try:
            data = read_object(self.spec)
        except ValueError as e:
            raise SpecError(f"{self.spec}: damaged ({e}); it holds the study's settings as it ran, and no other file "
                            f"does: put back a copy of it, or remove {self.root} to start the study over") from None
        return StudySpec.from_dict(data, str(self.spec))


def read_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; a ValueError saying why where the file holds none (cut short, say).

    A study writes its files whole (a temporary name renamed into place): one that does not read was damaged
    from outside (an interrupted copy, a failed disk, an editor).
    """
    try:
        value = json.loads(path.read_bytes())
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object but {type(value).__name__}")
    return value
