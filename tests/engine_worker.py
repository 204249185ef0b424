"""Worker for test_engines.py: the same masked NPO unlearning run and the same full fine-tuning run, under
1 process or under `accelerate launch` with 2 gloo processes (DDP or FSDP2, by the launch config).
Usage: python engine_worker.py OUT_DIR EXPECTED_NUM_PROCESSES [KINDS]  (KINDS: comma-separated of masked,
masked_nowd, full, capped, rmu, masked_resumed, full_resumed; default masked,full. DeepSpeed runs masked_nowd: it refuses masked weight decay.)
Each process writes rank<r>.json (its local parameter bytes during training, and which examples it drew
at every step); the main one writes result.json (losses, metrics), the final weights and saved models.
`import helpers` needs no path edit: a script's own folder (tests/) is first on its sys.path."""
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import PartialState

from loc_unlearn.config import TrainConfig
from loc_unlearn.errors import UserError
from loc_unlearn.evaluate.token_metrics import token_metrics
from loc_unlearn.models.load import save_model
from loc_unlearn.train import loop
from loc_unlearn.train.masked import local
from loc_unlearn.train.norm_cap import norm_cap
from loc_unlearn.utils import save_safetensors_atomic

from helpers import IDK, make_rows, make_tok, tiny_lm

out, expect = Path(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
# gloo on CPU, as the loop's accelerator will be (DeepSpeed: its own CPU accelerator, also gloo)
state = PartialState(cpu=True) if "deepspeed" not in sys.argv[1] else PartialState(backend="gloo")
assert state.num_processes == expect, f"expected {expect} processes, got {state.num_processes}"
tok = make_tok()
forget, retain = make_rows(9), make_rows(9, 5)
mask = torch.rand(2, 64, generator=torch.Generator().manual_seed(7)) < 0.15
# 9 rows in global batches of 4, micro batch 1: every epoch ends with a 1-example batch, so one of two
# processes has no example in that step and runs a weight-0 micro batch.
CFG = TrainConfig(lr=1e-2, epochs=2, batch_size=4, micro_batch_size=1, weight_decay=0.1, warmup_epochs=0.5,
                  checkpoint_every=1.0, max_length=64, seed=3)

seen: list = []
# What each process draws: the example ids of every micro batch, by optimizer step (test of #139).
drawn: list = []
_orig_micro, _orig_gradients = loop._micro_batch, loop._gradients


def recording_gradients(run, plan, step, perm, pairs):
    drawn.append([])
    rec = _orig_gradients(run, plan, step, perm, pairs)
    # parameter bytes held while training, after the step's backward (FSDP2 has resharded what the
    # forward gathered; ZeRO-3 holds its partitions)
    seen.append(local_bytes(run.model))
    return rec


def recording_micro_batch(plan, ids, retain_ids, device):
    drawn[-1].extend(int(i) for i in ids)
    return _orig_micro(plan, ids, retain_ids, device)


loop._micro_batch, loop._gradients = recording_micro_batch, recording_gradients


def local_bytes(model) -> tuple[int, int]:
    """(bytes of this process's parameter shards, bytes of the whole parameters): FSDP2 DTensors' local
    shards, ZeRO-3's partitions (ds_tensor; the parameter itself is empty outside forward)."""
    mine = whole = 0
    for p in model.parameters():
        if hasattr(p, "ds_tensor"):
            mine += p.ds_tensor.numel() * p.ds_tensor.element_size()
            whole += p.ds_numel * p.ds_tensor.element_size()
        else:
            mine += local(p).numel() * local(p).element_size()
            whole += p.numel() * p.element_size()
    return mine, whole




report = {"rank": state.process_index}
result = {"num_processes": state.num_processes}
RUNS = {"masked": ("npo", mask, CFG), "masked_nowd": ("npo", mask, replace(CFG, weight_decay=0.0)),
        "full": ("learn", None, CFG),
        # the injection's post-step norm cap (train/norm_cap.py), tight enough to bind at lr 1e-2
        "capped": ("learn", mask, CFG),
        # RMU's loss stops at its steering layer: later layers' deltas get no gradient (unused parameters)
        "rmu": ("rmu", mask, CFG), "rmu_refused": ("rmu", mask, CFG),
        "masked_resumed": ("npo", mask, CFG), "full_resumed": ("learn", None, CFG)}
CAP = 1.02
kinds = sys.argv[3].split(",") if len(sys.argv) > 3 else ["masked", "full"]
for kind in kinds:
    objective, m, cfg = RUNS[kind]
    model = tiny_lm(tok, L=2)
    seen.clear()
    drawn.clear()
    if kind.endswith("_resumed"):  # stopped after 3 steps (a checkpoint is written there), then resumed
        loop.train(model, tok, forget, retain, objective, replace(cfg, max_steps=3), out / kind, mask=m, idk=IDK,
                   device="cpu")
        model = tiny_lm(tok, L=2)
    try:
        res = loop.train(model, tok, forget, retain, objective, cfg, out / kind, mask=m, idk=IDK, device="cpu",
                         post_step=norm_cap(CAP) if kind == "capped" else None)
    except UserError as e:  # an engine refusing a run (RMU under DDP): the message is the result
        result[kind] = {"error": str(e)}
        continue
    final = res.model
    report[kind] = {"bytes": seen[-1], "drawn": list(drawn), "engine": res.engine}
    tm = token_metrics(final, tok, forget)
    if state.is_main_process:
        save_safetensors_atomic({k: v.detach().clone() for k, v in final.state_dict().items()},
                                out / f"final_{kind}.safetensors")
        save_model(final, tok, out / f"model_{kind}")
        result[kind] = {"losses": [r["loss"] for r in res.log], "grad_norms": [r["grad_norm"] for r in res.log],
                        "es": tm["es"], "engine": res.engine,
                        "checkpoints": [str(c) for c in res.checkpoints]}
    state.wait_for_everyone()
(out / f"rank{state.process_index}.json").write_text(json.dumps(report))
if state.is_main_process:
    (out / "result.json").write_text(json.dumps(result))
