"""`loc-unlearn <command> [--config file.yaml] key=value ...`

Every command resolves and validates one `Config` (config.py) and calls its function: a stage command
in commands.py, a study command in studies/, or `report`. Short keys per command (`method=npo`) are
aliases for dotted keys (`unlearn.method=npo`). User mistakes (UserError) and failed writes (a full disk,
a read-only folder) print one paragraph and exit 2; no traceback. A stop signal (SIGTERM, SIGUSR1:
stop.py) prints where the run stopped and exits 128 + signum (143, 138); Ctrl-C 130.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from . import stop
from .config import build_config
from .errors import Preempted, UserError, WriteError

# command -> (module:function, aliases, help). The module is imported when its command runs, so `--help`
# and a mistyped command answer at once and no command imports the others' dependencies.
COMMON = {"model": "input_model", "data": "data.source"}
COMMANDS: dict[str, tuple[str, dict, str]] = {
    "data generate": ("loc_unlearn.commands:cmd_data_generate",
                      {"n_authors": "data.n_authors", "qa_per_author": "data.qa_per_author", "seed": "data.seed"},
                      "write the offline synthetic author world (TOFU format) to out=DIR"),
    "finetune": ("loc_unlearn.commands:cmd_finetune",
                 {"split": "finetune.split", "seed": "finetune.train.seed", "model": "model.path"},
                 "fine-tune all parameters on a split (theta_r: split=retain90; split=full)"),
    "inject": ("loc_unlearn.commands:cmd_inject",
               {"mask": "inject.mask", "ratio": "inject.ratio", "seed": "inject.seed"},
               "inject the forget set into a (random 10%) value-vector region of theta_r -> theta_o"),
    "localize": ("loc_unlearn.commands:cmd_localize",
                 {"method": "localize.method", "ratio": "localize.ratio", "scope": "localize.scope",
                  "seed": "localize.seed", "source_mask": "localize.source_mask", "compare": "localize.compare"},
                 "score value vectors and write a mask"),
    "unlearn": ("loc_unlearn.commands:cmd_unlearn",
                {"method": "unlearn.method", "mask": "unlearn.mask", "reference": "eval.reference"},
                "masked unlearning; saves and evaluates the trajectory"),
    "evaluate": ("loc_unlearn.commands:cmd_evaluate", {"reference": "eval.reference"},
                 "ES/FS/RS, FQ, MU of a model; writes metrics.json"),
    "study controlled": ("loc_unlearn.studies.controlled:cmd_study", {"seeds": "study.seeds", "methods": "study.methods"},
                         "Oracle vs Random: the paper's causal test (SPEC §7)"),
    "study localization": ("loc_unlearn.studies.localization_benchmark:cmd_study",
                           {"methods": "study.methods", "localizers": "study.localizers"},
                           "localization methods vs random (SPEC §8, Table 1)"),
    "study output_fit": ("loc_unlearn.studies.output_fit:cmd_study", {}, "per-layer output reproduction (SPEC §9)"),
    "demo": ("loc_unlearn.studies.controlled:cmd_demo", {"seeds": "study.seeds", "methods": "study.methods"},
             "the controlled study on the tiny preset + output fit + report"),
    "attack relearn": ("loc_unlearn.attacks.commands:cmd_attack_relearn",
                       {"schedule": "attack.schedule", "theta_o": "attack.theta_o", "lr": "attack.lr",
                        "seed": "attack.seed", "relearn_data": "attack.relearn_data"},
                       "relearning attack (SPEC §10): fine-tune ALL parameters for k steps, measure recovery R(k)"),
    "attack quantize": ("loc_unlearn.attacks.commands:cmd_attack_quantize",
                        {"bits": "attack.bits", "group_size": "attack.group_size", "symmetric": "attack.symmetric",
                         "theta_o": "attack.theta_o", "theta_r": "attack.theta_r"},
                        "quantization attack (SPEC §10): round-to-nearest weights, FS/RS before and after"),
    "trajectory": ("loc_unlearn.evaluate.trajectory:cmd_trajectory",
                   {"init": "input_model", "checkpoints": "checkpoints", "reference": "eval.reference"},
                   "evaluate HF checkpoint folders as an unlearning trajectory (init = point 0): AUES, MU95"),
    "report": ("loc_unlearn.report:cmd_report", {}, "rebuild the report of a study run dir: report RUN_DIR"),
    "plan": ("loc_unlearn.plan:cmd_plan", {"method": "unlearn.method"},
             "per-GPU memory of every stage (weights, grads, optimizer, activations) on 1-8 GPUs under no "
             "engine, DDP, FSDP2 and ZeRO-3, and which fit 40/80/141 GB GPUs; from the model config alone "
             "(meta device, nothing downloaded); out=DIR writes plan.json and plan.md"),
}

# The config sections each command reads (its `--help` lists their keys); every command also reads the
# top-level keys (runs_dir, model=, out=, preset).
_STAGES = ["data", "model", "finetune", "eval"]
SECTIONS: dict[str, list[str]] = {
    "data generate": ["data"],
    "finetune": _STAGES,
    "inject": _STAGES + ["inject"],
    "localize": _STAGES + ["localize"],
    "unlearn": _STAGES + ["unlearn"],
    "evaluate": ["data", "model", "eval"],
    "trajectory": ["data", "model", "eval"],
    "study controlled": _STAGES + ["inject", "unlearn", "localize", "study"],
    "study localization": _STAGES + ["unlearn", "localize", "study"],
    "study output_fit": _STAGES + ["inject", "study"],
    "demo": _STAGES + ["inject", "unlearn", "localize", "study"],
    "attack relearn": _STAGES + ["attack"],
    "attack quantize": ["data", "model", "eval", "attack"],
    "report": [],
    "plan": ["model", "finetune", "inject", "unlearn", "localize", "eval", "study"],
}
TOP_LEVEL = ["runs_dir", "input_model", "out", "preset"]
# Top-level keys listed only by the commands that load a model (their sections include "model").
MODEL_TOP_LEVEL = ["device"]


def _keys_help(name: str) -> str:
    """The keys `name` reads: dotted key (type, default) and the first sentence of its docstring."""
    from .config import Config
    from .config_docs import describe_keys, field_docs

    docs = field_docs()["Config"]
    top = TOP_LEVEL + (MODEL_TOP_LEVEL if "model" in SECTIONS.get(name, []) else [])
    rows = [(k, _type_name(k), repr(getattr(Config(), k)), docs.get(k, "").split(". ")[0]) for k in top]
    for section in SECTIONS.get(name, []):
        rows += describe_keys(section)
    lines = ["config keys (key=value; defaults before presets, preset=tiny sets its own):"]
    lines += [f"  {k} ({t}, default {d}): {doc}" for k, t, d, doc in rows]
    return "\n".join(lines)


def _type_name(key: str) -> str:
    """A top-level key's type for --help: 'str', or the choices of a Literal ('auto|cpu|cuda')."""
    import typing

    from .config import Config, _hints

    choices = typing.get_args(_hints(Config)[key])
    return "|".join(choices) if choices else "str"


def _group_usage(group: str) -> str:
    subs = [(n, h) for n, (_, _, h) in COMMANDS.items() if n.startswith(group + " ")]
    lines = [f"usage: loc-unlearn {group} <subcommand> [key=value ...]", "", "subcommands:"]
    lines += [f"  {n.split(' ', 1)[1]:18s} {h}" for n, h in subs]
    lines += ["", f"`loc-unlearn {group} <subcommand> --help` lists the config keys it reads."]
    return "\n".join(lines)


def _report_usage(cfg) -> str:
    # Study run dirs are runs_dir/study-<name>/<hash>/ (runs.get_run); name the ones that exist.
    found = sorted(str(p.parent) for p in Path(cfg.runs_dir).glob("study-*/*/results.json"))
    hint = ("; study runs in " + cfg.runs_dir + ": " + ", ".join(found[:5])) if found else ""
    return f"report needs a study run directory: loc-unlearn report {cfg.runs_dir}/study-controlled/<hash>{hint}"


def _usage() -> str:
    lines = ["usage: loc-unlearn <command> [--config FILE.yaml] [key=value ...]", "", "commands:"]
    for name, (_, _, help_) in COMMANDS.items():
        lines.append(f"  {name:20s} {help_}")
    lines += ["", "Keys are dotted paths into the config (e.g. unlearn.train.lr=1e-4); see config.py.",
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
    target, aliases, help_ = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"loc-unlearn {name}", description=help_, epilog=_keys_help(name),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file with config values")
    parser.add_argument("positional", nargs="*", help="key=value overrides (report: RUN_DIR)")
    args = parser.parse_args(rest)
    overrides = [a for a in args.positional if "=" in a]
    positional = [a for a in args.positional if "=" not in a]
    all_aliases = {k: v for k, v in COMMON.items() if v} | aliases
    cfg = None
    try:
        with stop.handling(stop.stop_signals()):
            cfg = build_config(config_file=args.config, overrides=overrides, aliases=all_aliases)
            if name == "report" and not positional:
                raise UserError(_report_usage(cfg))
            module, fn = target.split(":")
            _quiet_deepspeed()
            func = getattr(importlib.import_module(module), fn)
            func(cfg, *positional) if positional else func(cfg)
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
