"""Every `loc-unlearn` command, in one package, each declared beside its function.

A command is a function `fn(cfg)` (or `fn(cfg, *positional)`) decorated with `@command(name, help,
sections, aliases)`: its name on the command line, its one-line help, the config sections whose keys its
`--help` lists, and its short keys (`method=` for `unlearn.method=`). cli.py builds the command table,
`--help` and the dispatch from these declarations alone, so a command is added in one place.

Command modules import the layers they run (stages, studies, report) inside the functions: `loc-unlearn
--help` and a mistyped command answer without importing torch. Commands resolve what the command line
names (model=PATH, out=DIR), resolve the data once, call stages or a study, and print where results are.

| module      | commands                                                              |
|-------------|-----------------------------------------------------------------------|
| pipeline.py | data generate, finetune, inject, localize, unlearn, evaluate, trajectory |
| study.py    | study controlled, study localization, study output_fit, demo, report |
| attack.py   | attack relearn, attack quantize                                       |
| plan.py     | plan                                                                  |
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

# Short keys every command accepts.
COMMON = {"model": "input_model", "data": "data.source"}
# The config sections of the commands that build and evaluate models.
PIPELINE = ("data", "model", "finetune", "eval")


@dataclass(frozen=True)
class Command:
    name: str
    """As typed: 'finetune', or 'group sub' ('study controlled')."""
    fn: Callable
    help: str
    """One line for `loc-unlearn --help` (and the description of the command's own --help)."""
    sections: tuple[str, ...] = ()
    """Config sections the command reads: its `--help` lists their keys (top-level keys always)."""
    aliases: dict = field(default_factory=dict)
    """Short keys of this command: `method` -> `unlearn.method`."""
    positional: str = ""
    """Name of a positional argument it takes (report: RUN_DIR); empty = none."""

    @property
    def group(self) -> str:
        return self.name.split(" ")[0] if " " in self.name else ""


COMMANDS: dict[str, Command] = {}
"""name -> Command, in the order `loc-unlearn --help` lists them (module order, then definition order)."""


def command(name: str, help: str, sections=(), aliases: dict | None = None, positional: str = ""):
    """Declare the decorated function as the command `name`."""
    def deco(fn):
        if name in COMMANDS:
            raise ValueError(f"command {name!r} declared twice")
        COMMANDS[name] = Command(name, fn, help, tuple(sections), dict(aliases or {}), positional)
        return fn
    return deco


from . import pipeline, study, attack, plan  # noqa: E402,F401  (the command modules declare their commands)
