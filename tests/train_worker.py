"""Worker for test_loop.test_two_processes_match_one: the same tiny masked NPO run under 1 or 2 processes.
Usage: python train_worker.py OUT_DIR EXPECTED_NUM_PROCESSES (under `accelerate launch` for 2).
`import helpers` needs no path edit: a script's own folder (tests/) is first on its sys.path."""
import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from loc_unlearn.config import TrainConfig
from loc_unlearn.train.loop import train
from loc_unlearn.utils import save_safetensors_atomic

from helpers import make_rows, make_tok, tiny_lm

out, expect = Path(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
tok = make_tok()
model = tiny_lm(tok, L=2)
mask = torch.rand(2, 64, generator=torch.Generator().manual_seed(7)) < 0.15
cfg = TrainConfig(lr=1e-2, epochs=3, batch_size=4, micro_batch_size=1, weight_decay=0.1, warmup_epochs=0.5,
                  checkpoint_every=0, max_length=64, seed=3)
# 9 rows in batches of 4: every epoch ends with a 1-example batch, so one process has no example in that
# step (its gradients are None while the other's are not; the all-reduce must still pair up).
res = train(model, tok, make_rows(9), make_rows(9, 5), "npo", cfg, out / "train", mask=mask)
state = PartialState()
# A plain launch without --multi_gpu/cpu would silently run independent single-process jobs.
assert state.num_processes == expect, f"expected {expect} processes, got {state.num_processes}"
if state.is_main_process:
    save_safetensors_atomic({k: v.clone() for k, v in model.state_dict().items()}, out / "final.safetensors")
    (out / "result.json").write_text(json.dumps({"num_processes": state.num_processes,
                                                 "losses": [r["loss"] for r in res.log]}))
