"""bf16 autocast vs fp32 on CPU, SmolLM2-135M-Instruct, side by side in one run (benchmarks/RESULTS.md).

Two questions for a CPU preset (smol-quick): is `train.mixed_precision: bf16` faster than fp32 on this
CPU, and does it give the same numbers?

  train  Two copies of the same model take the same masked steps (MaskedDelta, 10% random value-vector
         mask, AdamW, lr 1e-3, NLL of the synthetic world's forget rows with the chat template): one in
         fp32, one under torch.autocast(cpu, bf16) (what accelerate's mixed_precision=bf16 does on CPU).
         Steps alternate between the two copies (same batch, fp32 then bf16), so load from other
         processes hits both alike. Reported: median step time of each, the ratio, the max |loss
         difference| per step, the max |weight difference| of the trained value vectors, and the forget
         ES of both trained models (each measured in fp32: the effect of training precision alone).
  eval   token_metrics (ES/EM/NLL over answer, paraphrase and perturbed answers) of the fp32-trained
         model in fp32 vs under bf16 autocast, interleaved `--repeats` times (minimum time). Reported:
         the ratio, max |ES difference|, rows whose ES differs, max |NLL difference|. (The project's
         evaluation runs in fp32 whatever train.mixed_precision says; this says what bf16 would cost.)

    python benchmarks/bf16_cpu.py [--model DIR] [--steps 4] [--rows 20] [--repeats 2] [--threads 1]

--model: a model folder (default: SmolLM2 converted into --cache). A model that knows the forget rows
(e.g. a smol-quick theta_o: RUNS/inject/*/model) makes ES spread over 0..1, so ES agreement means more.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from loc_unlearn.data.formatting import collate, encode_qa, pad_id
from loc_unlearn.data.synthetic import write_world
from loc_unlearn.data.tofu import load_split
from loc_unlearn.evaluate.token_metrics import token_metrics
from loc_unlearn.models.load import load_model, smol_base
from loc_unlearn.train.masked import MaskedDelta

from masked_step import make_mask  # benchmarks/ is on sys.path when a script in it runs


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def masked_step(model, opt, batch, bf16: bool) -> tuple[float, float]:
    """One optimizer step; returns (loss, seconds)."""
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with autocast(bf16):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"], use_cache=False).loss
    loss.float().backward()
    opt.step()
    return float(loss.detach()), time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="", help="model folder (default: SmolLM2 from --cache)")
    ap.add_argument("--cache", default="runs/cache/smol")
    ap.add_argument("--steps", type=int, default=4, help="masked steps per precision")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rows", type=int, default=20, help="forget rows (train batches and eval set)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved eval repeats (minimum reported)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    path = args.model or str(smol_base(args.cache))
    model, tok = load_model(path)
    world = write_world(Path(tempfile.mkdtemp()) / "world", n_authors=10, qa_per_author=20, seed=0,
                        n_real_authors=20, n_world_facts=20)
    rows = load_split(str(world), "forget10_perturbed")[: args.rows]
    items = [encode_qa(tok, r["question"], r["answer"]) for r in rows]
    g = torch.Generator().manual_seed(0)
    batches = [collate([items[i] for i in torch.randperm(len(items), generator=g)[: args.batch].tolist()], pad_id(tok))
               for _ in range(args.steps)]

    # --- train: two identical copies, alternating steps
    mask = make_mask(model)
    runs = {}
    for name in ("fp32", "bf16"):
        m = copy.deepcopy(model).train()
        md = MaskedDelta(m, mask)
        runs[name] = {"model": m, "md": md, "opt": torch.optim.AdamW(md.parameters(), lr=args.lr, weight_decay=0.0),
                      "loss": [], "sec": []}
    for b in batches:
        for name, r in runs.items():
            loss, sec = masked_step(r["model"], r["opt"], b, bf16=name == "bf16")
            r["loss"].append(loss)
            r["sec"].append(sec)
            print(f"step {len(r['loss'])} {name}: loss {loss:.4f} {sec:.2f} s", flush=True)
    deltas = {name: torch.cat([p.detach().flatten() for p in r["md"].parameters()]) for name, r in runs.items()}
    trained = {}
    for name, r in runs.items():
        trained[name] = r["md"].merge().eval()
    es_after = {name: token_metrics(m, tok, [{"question": r["question"], "answer": r["answer"]} for r in rows],
                                    batch_size=32)["es"] for name, m in trained.items()}
    med = {name: statistics.median(r["sec"]) for name, r in runs.items()}
    train_res = {
        "steps": args.steps, "batch": args.batch,
        "median_step_s": med, "ratio_fp32_over_bf16": med["fp32"] / med["bf16"],
        "loss": {name: r["loss"] for name, r in runs.items()},
        "max_abs_loss_diff": max(abs(a - b) for a, b in zip(runs["fp32"]["loss"], runs["bf16"]["loss"])),
        "max_abs_delta_diff": float((deltas["fp32"] - deltas["bf16"]).abs().max()),
        "max_abs_delta": float(deltas["fp32"].abs().max()),
        "forget_es_after": {name: statistics.mean(v) for name, v in es_after.items()},
        "max_abs_es_diff_after": max(abs(a - b) for a, b in zip(es_after["fp32"], es_after["bf16"])),
    }

    # --- eval: the fp32-trained model, all answer variants, fp32 vs bf16 autocast, interleaved
    m = trained["fp32"]
    times = {"fp32": [], "bf16": []}
    res = {}
    for _ in range(args.repeats):
        for name in ("fp32", "bf16"):
            t = time.perf_counter()
            with autocast(name == "bf16"):
                res[name] = token_metrics(m, tok, rows, batch_size=32)
            times[name].append(time.perf_counter() - t)
            print(f"eval {name}: {times[name][-1]:.2f} s", flush=True)
    a, b = res["fp32"], res["bf16"]
    eval_res = {
        "rows": len(rows), "sequences": len(rows) * (2 + len(rows[0]["perturbed_answer"])),
        "min_s": {k: min(v) for k, v in times.items()},
        "ratio_fp32_over_bf16": min(times["fp32"]) / min(times["bf16"]),
        "mean_es": {"fp32": statistics.mean(a["es"]), "bf16": statistics.mean(b["es"])},
        "max_abs_es_diff": max(abs(x - y) for x, y in zip(a["es"], b["es"])),
        "rows_es_differ": sum(1 for x, y in zip(a["es"], b["es"]) if x != y),
        "max_abs_nll_diff": max(abs(x - y) for x, y in zip(a["nll"], b["nll"])),
        "max_abs_nll_perturbed_diff": max(abs(x - y) for p, q in zip(a["nll_perturbed"], b["nll_perturbed"])
                                          for x, y in zip(p, q)),
    }
    out = {"model": path, "threads": args.threads, "train": train_res, "eval": eval_res}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
