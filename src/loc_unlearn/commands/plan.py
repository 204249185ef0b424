"""`loc-unlearn plan`: the resource plan (plan.py) printed, and written to out=DIR."""
from __future__ import annotations

from pathlib import Path

from . import command


@command("plan", "per-GPU memory of every stage (weights, grads, optimizer, activations) on 1-8 GPUs under no "
         "engine, DDP, FSDP2 and ZeRO-3, and which fit 40/80/141 GB GPUs; from the model config alone "
         "(meta device, nothing downloaded); out=DIR writes plan.json and plan.md",
         ("model", "finetune", "inject", "unlearn", "localize", "eval", "study"), {"method": "unlearn.method"})
def plan(cfg) -> dict:
    """Print the plan; with out=DIR also write plan.json and plan.md there."""
    from ..plan import format_markdown, format_text, plan as make_plan
    from ..utils import write_json_atomic, write_text_atomic

    p = make_plan(cfg)
    print(format_text(p))
    if cfg.out:
        out = Path(cfg.out)
        write_json_atomic(out / "plan.json", {k: v for k, v in p.items() if not k.startswith("_")})
        write_text_atomic(out / "plan.md", format_markdown(p))
        print(f"\nwrote {out / 'plan.json'} and {out / 'plan.md'}")
    return p
