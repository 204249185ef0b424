"""Worker for reliability/test_preemption.py: 2 gloo processes (DDP, `accelerate launch`) train a tiny
model and only rank 1 receives SIGTERM, after its 2nd step. Each writes rank<r>.json: the signal it
stopped on and the paragraph, or that it finished. Usage: python stop_worker.py OUT_DIR"""
import json
import os
import signal
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from loc_unlearn import stop
from loc_unlearn.config import TrainConfig
from loc_unlearn.errors import Preempted
from loc_unlearn.train.loop import train

from helpers import make_rows, make_tok, tiny_lm

out = Path(sys.argv[1])
torch.set_num_threads(1)
state = PartialState(cpu=True)
steps = [0]


def post_step(md):
    steps[0] += 1
    if steps[0] == 2 and state.process_index == 1:
        os.kill(os.getpid(), signal.SIGTERM)


tok = make_tok()
cfg = TrainConfig(lr=1e-3, epochs=2, batch_size=4, warmup_epochs=0, checkpoint_every=1.0, max_length=64)
res = {"finished": False}
try:
    with stop.handling(stop.stop_signals()):
        train(tiny_lm(tok), tok, make_rows(12), [], "learn", cfg, out / "train", post_step=post_step, device="cpu")
    res["finished"] = True
except Preempted as e:
    res.update(signum=e.signum, message=str(e))
(out / f"rank{state.process_index}.json").write_text(json.dumps(res))
