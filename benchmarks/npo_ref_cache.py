"""NPO step with cached reference log-probs (ours, docs/objectives.md#reference-model) vs recomputing them every step with a second
model copy, both with a 10% value-vector mask (MaskedDelta). Round-robin timing (same batches), medians.
Memory: bytes of model weights held (the copy) plus the cache.

    python benchmarks/npo_ref_cache.py            # tiny: 4 layers, hidden 128, d_ff 512, batch 16x64
    python benchmarks/npo_ref_cache.py --smol     # SmolLM2-135M, batch 8x128
"""
import argparse
import copy
import statistics
import sys
import time

import torch

from loc_unlearn.train.masked import MaskedDelta
from loc_unlearn.train.objectives import OBJECTIVES, Context, resolve_hparams, seq_logp, sequence_logps

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from masked_step import build, make_mask, sync  # noqa: E402


def qa_batches(args, vocab, n):
    """Random 'QA' batches: first half prompt (label -100), second half answer."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g)
        labels = ids.clone()
        labels[:, : args.seq // 2] = -100
        out.append({"input_ids": ids.to(args.device), "attention_mask": torch.ones_like(ids).to(args.device),
                    "labels": labels.to(args.device)})
    return out


def param_bytes(*models):
    seen, n = set(), 0
    for m in models:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.nbytes
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smol", action="store_true")
    ap.add_argument("--cache", default="runs/cache/smol")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch, args.seq = (8, 128) if args.smol else (16, 64)
    steps = args.steps or (4 if args.smol else 20)
    warm = 1 if args.smol else 3
    fn = OBJECTIVES.get("npo")
    hp = resolve_hparams("npo", {"alpha": 0.0}, 0)  # forget term only: the part the cache changes

    cached_model = build(args)
    mask = make_mask(cached_model)
    recomp_model = build(args)
    ref_copy = copy.deepcopy(recomp_model).eval().requires_grad_(False)  # what the cache avoids
    batches = qa_batches(args, cached_model.config.vocab_size, warm + steps)
    t0 = time.perf_counter()
    cache = sequence_logps(cached_model.eval(), batches).to(args.device)  # once, before training
    t_cache = time.perf_counter() - t0
    runs = {}
    for name, model in (("cached", cached_model), ("recompute", recomp_model)):
        md = MaskedDelta(model.train(), mask)
        runs[name] = (model, md, torch.optim.AdamW(md.parameters(), lr=1e-3, weight_decay=0.0))
    times = {k: [] for k in runs}
    losses = {k: [] for k in runs}
    B = args.batch
    for i, b in enumerate(batches):
        for name, (model, md, opt) in runs.items():
            opt.zero_grad(set_to_none=True)
            sync(args.device)
            t = time.perf_counter()
            if name == "cached":
                ref = cache[i * B:(i + 1) * B]
            else:
                with torch.no_grad():
                    ref = seq_logp(ref_copy, b)[0]
            loss, _ = fn(model, {"forget": b}, Context(hp=hp, ref_logp={"forget": ref}))
            (loss.sum() / B).backward()
            opt.step()
            sync(args.device)
            if i >= warm:
                times[name].append(time.perf_counter() - t)
            losses[name].append(loss.sum().item() / B)
    med = {k: statistics.median(v) for k, v in times.items()}
    mem_cached = param_bytes(cached_model) + cache.nbytes
    mem_recomp = param_bytes(recomp_model, ref_copy)
    name = "SmolLM2-135M" if args.smol else "tiny Llama (4 x 128, d_ff 512)"
    print(f"command: python benchmarks/npo_ref_cache.py {' '.join(sys.argv[1:])}")
    print(f"## {name}, NPO forget term, batch {args.batch}x{args.seq}, 10% mask, {args.device}, "
          f"torch threads {torch.get_num_threads()}, {steps} timed rounds")
    print("| variant | step (median s) | weights+cache held (MiB) |")
    print("|---|---|---|")
    print(f"| cached reference log-probs (ours) | {med['cached']:.4f} | {mem_cached / 2**20:.1f} |")
    print(f"| recompute with a second model copy | {med['recompute']:.4f} | {mem_recomp / 2**20:.1f} |")
    print(f"\nspeed-up: {med['recompute'] / med['cached']:.2f}x (target >= 1.3x); one-off cache build for "
          f"{len(cache)} examples: {t_cache:.2f} s; memory ratio {mem_recomp / mem_cached:.2f}x")
    print(f"max |loss difference| between the two over all steps: "
          f"{max(abs(a - b) for a, b in zip(losses['cached'], losses['recompute'])):.2e}")


if __name__ == "__main__":
    main()
