"""Command-line plumbing shared by the project's CLIs: one-line errors, a flag per recipe setting."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
from typing import Any, Iterable, NoReturn

from recipe.config import AMP_MODES, COMPILE_MODES, DEVICES, PIPELINES, SWITCHES, RecipeConfig

USAGE_ERROR = 2

METAVARS = {"data": "SOURCE", "data_dir": "DIR", "int": "N", "float": "X"}
CHOICES = {"device": DEVICES, "pipeline": PIPELINES, "amp": AMP_MODES, "channels_last": SWITCHES,
           "compile": COMPILE_MODES}
# Flags whose value may be left out: --compile alone means torch.compile's default mode.
BARE_VALUE = {"compile": "default"}


class Parser(argparse.ArgumentParser):
    """argparse, but bad input is one line (what was wrong) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message} (see --help)")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, names: Iterable[str] | None = None,
                     title: str = "recipe settings") -> None:
    """A flag per RecipeConfig field (or per named field), defaulting to None = 'not given'."""
    group = parser.add_argument_group(title)
    fields = {f.name: f for f in dataclasses.fields(RecipeConfig)}
    for name in names or fields:
        f = fields[name]
        default = f.default
        help_text = f"{f.metadata['help']} (default: {default})"
        if f.type == "bool":
            group.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            bare = {"nargs": "?", "const": BARE_VALUE[name]} if name in BARE_VALUE else {}
            group.add_argument(flag(name), dest=name, type=kind, default=None, choices=CHOICES.get(name), **bare,
                               metavar=None if name in CHOICES else METAVARS.get(name, METAVARS.get(f.type, 'S')), help=help_text)


def given_settings(args: argparse.Namespace, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The recipe settings the user gave on the command line."""
    fields = names or [f.name for f in dataclasses.fields(RecipeConfig)]
    return {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session and every process it started (compile workers, a
    study's Ray workers), unless it has ended (its pid may be another's by now); then reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
