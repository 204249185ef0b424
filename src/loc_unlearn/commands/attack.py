"""`loc-unlearn attack relearn|quantize`: the robustness attacks (docs/attacks.md) on model=PATH.

Both read the `attack` section, run the cached stage (stages.relearn / stages.quantize: runs_dir/
attack_relearn/<hash>, runs_dir/attack_quantize/<hash>), copy the result JSON to out= when given, and
print a small table.
"""
from __future__ import annotations

from pathlib import Path

from . import PIPELINE, command


def _target(cfg, name: str):
    from .. import stages
    from ..errors import UserError

    model = stages.optional_model(cfg.input_model, "model")
    if model is None:
        raise UserError(f"attack {name} needs model=PATH (an unlearned model: run dir or model folder)")
    return stages, model


def _write_out(cfg, name: str, result: dict) -> None:
    from ..utils import write_json_atomic

    if cfg.out:
        write_json_atomic(Path(cfg.out) / name, result)
        print(f"results written to {Path(cfg.out) / name}")


@command("attack relearn", "relearning attack (docs/attacks.md): fine-tune ALL parameters for k steps, "
         "measure recovery R(k)", PIPELINE + ("attack",),
         {"schedule": "attack.schedule", "theta_o": "attack.theta_o", "lr": "attack.lr",
          "seed": "attack.seed", "relearn_data": "attack.relearn_data"})
def attack_relearn(cfg) -> None:
    """`loc-unlearn attack relearn model=PATH [attack.theta_o=PATH] [out=DIR]`."""
    from ..attacks.relearn import format_relearn_table

    stages, model = _target(cfg, "relearn")
    res = stages.relearn(cfg, stages.data_source(cfg), model)
    _write_out(cfg, "relearn.json", res)
    for r in res["variants"].values():
        print(format_relearn_table(r))


@command("attack quantize", "quantization attack (docs/attacks.md): round-to-nearest weights, FS/RS before "
         "and after", ("data", "model", "eval", "attack"),
         {"bits": "attack.bits", "group_size": "attack.group_size", "symmetric": "attack.symmetric",
          "theta_o": "attack.theta_o", "theta_r": "attack.theta_r"})
def attack_quantize(cfg) -> None:
    """`loc-unlearn attack quantize model=PATH [attack.theta_o=PATH attack.theta_r=PATH] [out=DIR]`."""
    stages, model = _target(cfg, "quantize")
    res = stages.quantize(cfg, stages.data_source(cfg), model)
    _write_out(cfg, "quantize.json", res)
    print(format_quantize_table(res))


def format_quantize_table(res: dict) -> str:
    """A small text table of the quantization stage's result: FS and RS per model and setting."""
    s = res["settings"]
    lines = [f"quantization attack (RTN, group {s['group_size']}, {'symmetric' if s['symmetric'] else 'asymmetric'}, "
             f"{'+'.join(s['include'])})", f"{'model':<10} {'bits':>5}  {'FS':>6}  {'RS':>6}"]
    for name, m in res["models"].items():
        for b, r in m["results"].items():
            lines.append(f"{name:<10} {b:>5}  {r['FS']:>6.3f}  {r['RS']:>6.3f}")
    return "\n".join(lines)
