"""`loc-unlearn <command> [--config file.yaml] key=value ...`

Every command resolves and validates one `Config` (config/) and calls its function. The commands, their
help, config sections and short keys are declared beside their functions in commands/ (the one table,
`commands.COMMANDS`); this module only parses the command line and reports errors. Short keys per command
(`method=npo`) are aliases for dotted keys (`unlearn.method=npo`). User mistakes (UserError) and failed
writes (a full disk, a read-only folder) print one paragraph and exit 2; no traceback. A stop signal
(SIGTERM, SIGUSR1: stop.py) prints where the run stopped and exits 128 + signum (143, 138); Ctrl-C 130.
"""
from __future__ import annotations

import argparse
import sys

from . import stop
from .commands import COMMANDS, COMMON
from .config import build_config
from .errors import Preempted, UserError, WriteError

TOP_LEVEL = ["runs_dir", "input_model", "out", "preset", "plugins"]
# Top-level keys listed only by the commands that load a model (their sections include "model").
MODEL_TOP_LEVEL = ["device"]


def _keys_help(name: str, plugins: list[str]) -> str:
    """The keys `name` reads: dotted key (type, default) and the first sentence of its docstring; for the
    unlearn and localize sections also every registered method's hyperparameters, and for eval the metrics
    (built in and from `plugins`, loaded first: a plug-in's hyperparameters are listed like the others)."""
    from .config import Config
    from .config_docs import describe_keys, field_docs

    docs = field_docs()["Config"]
    sections = COMMANDS[name].sections
    top = TOP_LEVEL + (MODEL_TOP_LEVEL if "model" in sections else [])
    rows = [(k, _type_name(k), repr(getattr(Config(), k)), docs.get(k, "").split(". ")[0]) for k in top]
    methods = [s for s in sections if s in ("unlearn", "localize", "eval")]
    if methods:
        from .plugins import load_plugins, metrics_help, params_help  # imports torch: only for these sections

        load_plugins(plugins)
    for section in sections:
        rows += describe_keys(section)
        if section in ("unlearn", "localize"):
            rows += [(k, t, f"per method: {d}", doc) for k, t, d, doc in params_help(section)]
    lines = ["config keys (key=value; defaults before presets, preset=tiny sets its own):"]
    lines += [f"  {k} ({t}, default {d}): {doc}" for k, t, d, doc in rows]
    if "eval" in methods:
        lines += ["metrics for eval.metrics=[NAME,...] (computed at every full evaluation point):"]
        lines += [f"  {n}: {label}, {direction}. {doc}" for n, label, direction, doc in metrics_help()] or [
            "  (none registered: plugins=FILE.py adds them, README 'Add your own method')"]
    return "\n".join(lines)


def _type_name(key: str) -> str:
    """A top-level key's type for --help: 'str', or the choices of a Literal ('auto|cpu|cuda')."""
    import typing

    from .config import Config, _hints

    tp = _hints(Config)[key]
    if typing.get_origin(tp) is typing.Literal:
        return "|".join(typing.get_args(tp))
    return str(tp).replace("typing.", "") if typing.get_args(tp) else getattr(tp, "__name__", str(tp))


def _group_usage(group: str) -> str:
    subs = [(c.name, c.help) for c in COMMANDS.values() if c.group == group]
    lines = [f"usage: loc-unlearn {group} <subcommand> [key=value ...]", "", "subcommands:"]
    lines += [f"  {n.split(' ', 1)[1]:18s} {h}" for n, h in subs]
    lines += ["", f"`loc-unlearn {group} <subcommand> --help` lists the config keys it reads."]
    return "\n".join(lines)


def _plugins_named(args: list[str]) -> list[str]:
    """plugins= on the command line, for --help (read by the config's own coercion, as for a run)."""
    from .config import Config, apply_override

    for a in args:
        if a.startswith("plugins="):
            return apply_override(Config(), "plugins", a.split("=", 1)[1]).plugins
    return []


def _usage() -> str:
    lines = ["usage: loc-unlearn <command> [--config FILE.yaml] [key=value ...]", "", "commands:"]
    for c in COMMANDS.values():
        lines.append(f"  {c.name:20s} {c.help}")
    lines += ["", "Keys are dotted paths into the config (e.g. unlearn.train.lr=1e-4); `<command> --help` lists them.",
              "preset=tiny|smol|paper-llama3.1-8b|paper-olmo2-7b picks the scale."]
    return "\n".join(lines)


def _quiet_deepspeed() -> None:
    """DeepSpeed (when installed, accelerate imports it) warns on every command of a machine without a GPU
    that it falls back to its CPU accelerator; say so up front instead, unless the user chose one."""
    import os

    import torch

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name = argv[0]
    rest = argv[1:]
    if f"{name} {rest[0] if rest else ''}".strip() in COMMANDS and rest:
        name, rest = f"{name} {rest[0]}", rest[1:]
    if name not in COMMANDS and any(c.startswith(name + " ") for c in COMMANDS):
        # a group (data, study, attack) without its subcommand, or with --help
        if not rest or rest[0] in ("-h", "--help"):
            print(_group_usage(name))
            return 0
        print(f"error: unknown subcommand {name} {rest[0]!r}\n{_group_usage(name)}", file=sys.stderr)
        return 2
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; known commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    wants_help = any(a in ("-h", "--help") for a in rest)
    try:
        epilog = _keys_help(name, _plugins_named(rest)) if wants_help else None
    except UserError as e:  # a plug-in named on the command line that does not load
        print(f"error: {e}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"loc-unlearn {name}", description=cmd.help, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file with config values")
    parser.add_argument("positional", nargs="*",
                        help="key=value overrides" + (f" and {cmd.positional}" if cmd.positional else ""))
    args = parser.parse_args(rest)
    overrides = [a for a in args.positional if "=" in a]
    positional = [a for a in args.positional if "=" not in a]
    all_aliases = dict(COMMON) | cmd.aliases
    cfg = None
    try:
        with stop.handling(stop.stop_signals()):
            cfg = build_config(config_file=args.config, overrides=overrides, aliases=all_aliases)
            if any(s in cmd.sections for s in ("unlearn", "localize", "eval", "study")):
                from .plugins import check_methods  # loads cfg.plugins; each registry checks its names

                check_methods(cfg)
            if positional and not cmd.positional:
                raise UserError(f"{name} takes key=value arguments only; got {' '.join(positional)!r}")
            _quiet_deepspeed()
            if cfg.threads:  # config `threads`; restored afterwards when main() is called in process (tests)
                from .utils import torch_threads  # imports torch: only when the config pins the threads

                with torch_threads(cfg.threads):
                    cmd.fn(cfg, *positional)
            else:
                cmd.fn(cfg, *positional)
    except WriteError as e:  # the same paragraph, now naming the runs dir too
        from .utils import write_failure_text

        runs_dir = getattr(cfg, "runs_dir", None)
        print(f"error: {write_failure_text(e.path, e.errno, runs_dir) if e.errno else e}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:  # SIGTERM / SIGUSR1 (stop.py): the conventional status of death by that signal
        print(f"error: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted; completed stages are kept and a rerun resumes", file=sys.stderr)
        return 130
    except Exception as e:
        # A write that failed outside utils.writing, or a library's own error type carrying the errno
        # (safetensors: "No space left on device (os error 28)"): the same paragraph as WriteError. A
        # library error says nothing about reading vs writing, so only a full disk counts there.
        from .utils import NO_SPACE, write_errno, write_failure_text  # here: utils imports torch

        code = write_errno(e) if isinstance(e, OSError) else write_errno(e, NO_SPACE)
        if code is None:
            raise
        runs_dir = getattr(cfg, "runs_dir", None)
        path = getattr(e, "filename", None) or runs_dir or "."
        print(f"error: {write_failure_text(path, code, runs_dir)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
